// Posts the LTI form of the page at once (its button is there for browsers without scripts).
document.getElementById("lti-form-post").submit();
