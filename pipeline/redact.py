"""Credentials out of what is logged: URI passwords and credential-like query values become `***`."""

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# Query keys whose values are secrets: token, access_token, password, passwd, pwd, secret, key, api_key,
# sig, signature (Azure SAS `sig`, S3 `X-Amz-Signature`, `X-Amz-Credential`), auth, credential, session.
SECRET_KEY = re.compile(r"token|pass|pwd|secret|key|sig|auth|cred|session", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """`uri` with the userinfo password and the values of credential-like query keys replaced by `***`.

    Args:
        uri: any string; one without `://` (a path, a plain value) comes back unchanged.

    Returns:
        The same URI, e.g. `https://user:***@host/x?token=***&page=2`; the user name, host, path and
        other query values keep their exact spelling. A URI that cannot be parsed comes back as `***`.
    """
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed IPv6 bracket: keep nothing of it
        return MASK
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = f"{userinfo.split(':', 1)[0]}:{MASK}"
    netloc = f"{userinfo}{at}{host}"
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # exactly as written (urlunsplit would turn sqlite:/// into sqlite:/)
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )


def _redact_pair(pair: str) -> str:
    name, eq, _ = pair.partition("=")
    return f"{name}={MASK}" if eq and SECRET_KEY.search(unquote(name)) else pair


def redact_params(value: object) -> object:
    """A copy of a (nested) params dump with `redact_uri` applied to every string in it.

    Args:
        value: A dict, list, string or other value (nested).

    Returns:
        The same structure, every string through redact_uri; other values as they were.
    """
    if isinstance(value, dict):
        return {key: redact_params(sub) for key, sub in value.items()}
    if isinstance(value, list):
        return [redact_params(sub) for sub in value]
    return redact_uri(value) if isinstance(value, str) else value
