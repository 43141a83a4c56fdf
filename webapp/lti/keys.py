"""The platform's signing keys: RS256 key pairs in the database, rotated with an overlap.

- The first key is made when one is first needed (a launch, the key set); ``rotate`` makes a new
  one current (``flask --app webapp lti-keys rotate``).
- The current key is the newest one not retired. Rotating retires the others; a retired key stays
  in the key set for ``TOOLCALL_LTI_KEY_OVERLAP_DAYS`` more, because tools cache key sets and an
  id_token signed just before the rotation must still verify.
- A private key is stored as PKCS#8 PEM encrypted with Fernet under a key derived (HKDF) from
  ``SECRET_KEY``; the fallbacks in ``SECRET_KEY_FALLBACKS`` still decrypt, so the secret key can be
  rotated as the portal's other signatures are. It is never shown; the key set publishes only the
  public half.

The cryptography is ``cryptography``'s, the JOSE is PyJWT's.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import lru_cache

import jwt
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from webapp.lti.models import PlatformKey
from webapp.models import utcnow

ALGORITHM = "RS256"
KEY_BITS = 2048
#: Info string of the key derivation: a key derived for another purpose never decrypts these.
_HKDF_INFO = b"toolcall lti platform signing key"


class KeyUnavailable(RuntimeError):
    """No platform key can be decrypted with the configured secret keys."""


def _fernet_key(secret: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret.encode())
    return base64.urlsafe_b64encode(derived)


def _cipher(config: Mapping) -> MultiFernet:
    secrets_ = [config["SECRET_KEY"], *config.get("SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets_])


def _new_pair(config: Mapping) -> PlatformKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    kid = secrets.token_urlsafe(16)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.pop("key_ops", None)  # RFC 7517 §4.3: not together with "use", which LTI tools read
    jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return PlatformKey(
        kid=kid, private_key=_cipher(config).encrypt(pem).decode(), public_jwk=json.dumps(jwk, sort_keys=True)
    )


def current(session: Session, config: Mapping) -> PlatformKey:
    """The key that signs now; the first one is made (and committed) when there is none."""
    key = session.scalar(
        select(PlatformKey).where(PlatformKey.retired.is_(None)).order_by(PlatformKey.id.desc()).limit(1)
    )
    if key is None:
        key = _new_pair(config)
        session.add(key)
        session.commit()
    return key


def rotate(session: Session, config: Mapping) -> PlatformKey:
    """Make a new key current and retire the others (committed); they stay published for the overlap."""
    key = _new_pair(config)
    session.add(key)
    session.flush()
    session.execute(
        update(PlatformKey)
        .where(PlatformKey.retired.is_(None), PlatformKey.id != key.id)
        .values(retired=utcnow()),
        execution_options={"synchronize_session": False},
    )
    session.commit()
    return key


def published(session: Session, config: Mapping) -> Sequence[PlatformKey]:
    """The keys in the key set: every key not retired, and those retired within the overlap."""
    since = utcnow() - timedelta(days=config["TOOLCALL_LTI_KEY_OVERLAP_DAYS"])
    return session.scalars(
        select(PlatformKey)
        .where(or_(PlatformKey.retired.is_(None), PlatformKey.retired > since))
        .order_by(PlatformKey.id.desc())
    ).all()


def key_set(session: Session, config: Mapping) -> dict:
    """The JWKS document: the public half of each published key (the first key is made if none)."""
    current(session, config)
    return {"keys": [json.loads(key.public_jwk) for key in published(session, config)]}


def sign(session: Session, config: Mapping, claims: Mapping) -> str:
    """``claims`` as a JWT signed RS256 with the current key, its ``kid`` in the header."""
    key = current(session, config)
    return jwt.encode(dict(claims), _private_key(key, config), algorithm=ALGORITHM, headers={"kid": key.kid})


def _private_key(key: PlatformKey, config: Mapping) -> rsa.RSAPrivateKey:
    try:
        pem = _cipher(config).decrypt(key.private_key.encode())
    except InvalidToken:
        raise KeyUnavailable(
            f"the platform key {key.kid} cannot be decrypted with SECRET_KEY or SECRET_KEY_FALLBACKS; "
            "put the old secret key in SECRET_KEY_FALLBACKS, or run lti-keys rotate"
        ) from None
    return _load_private(pem)


@lru_cache(maxsize=16)
def _load_private(pem: bytes) -> rsa.RSAPrivateKey:
    # Loading a PEM key costs more than the signature it makes: each decrypted key is loaded once.
    return serialization.load_pem_private_key(pem, password=None)
