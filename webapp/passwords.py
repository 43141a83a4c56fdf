"""Password storage: Argon2id at OWASP's recommended minimum, older hashes upgraded on login.

Argon2id with 19 MiB of memory, 2 passes and 1 lane is the first configuration the OWASP Password
Storage Cheat Sheet recommends. It costs about 16 ms of CPU per check on a 2-vCPU machine, where
Werkzeug's default (scrypt with N = 2^15, below OWASP's N = 2^17 for scrypt) costs about 70 ms: the
login is most of the CPU a start costs (docs/portal-performance.md), so the stronger choice is also
the faster one.

Rows written before (Werkzeug's ``scrypt:...`` and ``pbkdf2:...`` formats) still verify, and
``needs_rehash`` tells the login to store the password again in the current format. A row whose hash
is not a hash at all (``"!"``, for accounts that cannot log in) matches no password.
"""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from werkzeug.security import check_password_hash

# OWASP: "m=19456 (19 MiB), t=2, p=1". The library's own default (64 MiB, 3 passes, 4 lanes) costs
# 8 times as much CPU here, for a margin OWASP does not ask for.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_ARGON2 = "$argon2"


def hash_password(password: str) -> str:
    """The string to store for ``password`` (salted, self-describing: ``$argon2id$v=19$m=...``)."""
    return _HASHER.hash(password)


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash, in any format the portal has written."""
    if stored.startswith(_ARGON2):
        try:
            return _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    return check_password_hash(stored, password)


def needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified should be replaced by one in the current format."""
    return not stored.startswith(_ARGON2) or _HASHER.check_needs_rehash(stored)


@cache
def _no_such_user() -> str:
    """A hash no typed password matches (of 32 random bytes), made once."""
    return hash_password(secrets.token_hex(32))


def check_unknown_user(password: str) -> None:
    """Spend what checking a real user's password spends, for a username that does not exist:
    otherwise the time of the answer alone would tell whether a username is taken."""
    check_password(_no_such_user(), password)
