"""Secrets out of log data: key-based redaction, URL credentials, secrets in free text
(:class:`TextMasker`, shared by the logs and the Sentry scrubber), control characters."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

REDACTED = "[REDACTED]"
#: Key fragments that mark a value as secret (matched case-insensitively, as substrings).
SECRET_FRAGMENTS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "authorization",
    "cookie",
    "session",
    "credential",
    "private_key",
)
#: Fragments error reports (Sentry events, the exception events of traces) scrub on top
#: of :data:`SECRET_FRAGMENTS`.
REPORT_FRAGMENTS: tuple[str, ...] = (
    "auth",
    "pwd",
    "csrf",
    "xsrf",
    "jwt",
    "bearer",
    "privatekey",
    "sessid",
)
_MAX_DEPTH = 8


class Redactor:
    """Replaces the values of secret-looking keys, at any depth, in a copy of the data.

    :param mask_text: applied to every string value met on the way (the logs mask
        ``key=value`` secrets and URL credentials in them); strings pass as they are
        without it.
    """

    def __init__(
        self,
        extra_fragments: Iterable[str] = (),
        mask_text: Callable[[str], str] | None = None,
    ) -> None:
        self.fragments = tuple(
            dict.fromkeys(f.lower() for f in (*SECRET_FRAGMENTS, *extra_fragments) if f)
        )
        self.mask_text = mask_text
        self._verdicts: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        """Whether ``key`` names a secret (cached per key)."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            lowered = key.lower()
            verdict = any(fragment in lowered for fragment in self.fragments)
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def redact(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of ``value`` with secret keys' values replaced.

        Mappings and anything with ``items()`` (werkzeug's ``Headers``, ``MultiDict``)
        are walked by key; a ``(key, value)`` pair whose key looks secret (a list of
        header pairs) has its value replaced; non-finite floats become strings.
        """
        if isinstance(value, str):
            return value if self.mask_text is None else self.mask_text(value)
        if value is None or isinstance(value, (int, bool)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if depth >= _MAX_DEPTH:
            return "<too deep>"
        items = getattr(value, "items", None)
        if isinstance(value, Mapping) or (callable(items) and not isinstance(value, type)):
            out: dict[str, Any] = {}
            try:
                pairs = list(value.items())
            except Exception:
                return _safe_repr(value)
            for key, item in pairs:
                name = key if isinstance(key, str) else repr(key)
                out[name] = REDACTED if self.is_secret(name) else self.redact(item, depth + 1)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            if (
                isinstance(value, tuple)
                and len(value) == 2
                and isinstance(value[0], str)
                and self.is_secret(value[0])
            ):
                return [value[0], REDACTED]
            return [self.redact(item, depth + 1) for item in value]
        return _safe_repr(value)


# Credentials in a URL: with a password, everything up to the last "@" before the line
# ends or another URL starts is masked (drivers accept unencoded "@", "/" and spaces in
# it, so over-masking is the safe side); a user name alone that looks like a token
# (https://ghp_x1y2z3@host) is masked whole.
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):"
    r"(?P<password>(?:(?![A-Za-z][A-Za-z0-9+.-]*://)[^\n])*)@"
)
_URL_USER = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^:@/\s]+@")


def mask_url_credentials(text: str) -> str:
    """``postgresql://user:pass@host`` -> ``postgresql://user:***@host``;
    ``https://tok3n@host`` -> ``https://***@host``; ``postgresql://postgres@host`` stays."""
    if "://" not in text or "@" not in text:
        return text
    text = _URL_PASSWORD.sub(_masked_password, text)
    return _URL_USER.sub(_masked_user, text)


def _masked_user(match: re.Match[str]) -> str:
    # A user name alone is kept when it reads as a name (postgres, git); one that looks
    # like a token (long, or with digits) is masked.
    user = match[0][len(match["scheme"]) : -1]
    if len(user) >= 16 or any(c.isdigit() for c in user):
        return f"{match['scheme']}***@"
    return match[0]


def _masked_password(match: re.Match[str]) -> str:
    # With an empty password the user name is the secret (a token): mask it instead.
    if match["password"]:
        return f"{match['scheme']}{match['user']}:***@"
    return f"{match['scheme']}***:@"


# --- secrets in free text -------------------------------------------------------------

#: Schemes of an ``Authorization``-style value: the word after them is the credential.
_AUTH_SCHEMES = r"(?:bearer|basic|token|digest|apikey)\s+"
#: Whether a text is one of those schemes followed by spaces (``"Bearer "``).
is_auth_scheme = re.compile(_AUTH_SCHEMES, re.IGNORECASE).fullmatch
#: Secret values shorter than this are not swept from other places (too many false hits),
#: nor taken for a token in prose.
MIN_SECRET_LENGTH = 6
_URL_SECRET = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://(?:[^:@/\s]*:(?P<password>[^@\s]+)|(?P<user>[^:@/\s]+))@"
)
_CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<"}
_TOKEN_CHARS = frozenset("_+/=~")
# A string literal of Python source: optional prefix, either quote, escapes inside.
_LITERAL = re.compile(r"""(?:\b[rRbBuUfF]{1,2})?(?P<q>['"])(?P<body>(?:\\.|(?!(?P=q)).)*)(?P=q)""")
_DROP_CLOSERS = str.maketrans("", "", ")]}")
_DROP_OPENERS = str.maketrans("", "", "([{")


class TextMasker:
    """Masks secrets in free text: one implementation for log lines and Sentry events.

    - credentials in URLs (:func:`mask_url_credentials`);
    - ``key=value`` / ``key: value`` pairs whose key contains a secret fragment (quoted
      values whole, ``Authorization: Bearer ...``, ``password=...`` in a DSN or a message,
      ``'token': '...'`` in a ``repr``);
    - a token-like word right after a secret-looking word (``invalid token 3fa9c1...``,
      ``Bearer ...``); ordinary prose (``token expired for user 42``) is left alone.

    Lines of source code (:meth:`mask_code`, :meth:`mask_traceback`) keep their code and
    lose the string literals that follow a secret-looking name; a literal that holds a
    secret itself (``"password=hunter2"``) is masked as text.

    :param fragments: lower-case key fragments that mark a secret (``password``, ...).
    """

    def __init__(self, fragments: Iterable[str]) -> None:
        self.fragments = tuple(dict.fromkeys(f.lower() for f in fragments if f))
        pattern = "|".join(re.escape(f) for f in sorted(self.fragments, key=len, reverse=True))
        # Most strings hold no secret-looking name: a search for the bare fragments is
        # much cheaper than the full pattern, whose leading [\w.-]* backtracks.
        self._fragment = re.compile(pattern, re.IGNORECASE).search
        self._assignment = re.compile(
            rf"(?P<key>[\w.-]*(?:{pattern})[\w.-]*)"
            r"(?P<sep>['\"]?\s*[=:]\s*|['\"]\s*,\s*|[ \t]+)"
            rf"(?:(?P<q>['\"])(?P<qscheme>{_AUTH_SCHEMES})?(?P<qvalue>(?:(?!(?P=q))[^\n])*)(?P=q)?"
            rf"|(?P<scheme>{_AUTH_SCHEMES})?(?P<value>[^\s'\"&]+))",
            re.IGNORECASE,
        )
        self._word_end = re.compile(r"[\w.-]*").match

    def has_fragment(self, text: str) -> bool:
        """Whether ``text`` contains a secret fragment (a cheap first test)."""
        return self._fragment(text) is not None

    def mask(self, text: str, found: set[str] | None = None) -> str:
        """``text`` with URL credentials and secret ``key=value`` pairs masked.

        :param found: collects the values masked (to be swept from elsewhere).
        """
        if "://" in text:
            if found is not None:
                for match in _URL_SECRET.finditer(text):
                    found.add(match["password"] or match["user"])
            text = mask_url_credentials(text)
        if self._fragment(text) is None:
            return text
        return self._assignment.sub(lambda match: _mask_pair(match, found), text)

    def mask_code(self, lines: Sequence[Any], found: set[str] | None = None) -> list[Any]:
        """Consecutive lines of source code with every string literal that follows a
        secret-looking name masked (``API_KEY = "sk_live_..."``, ``auth=("ada", "pw")``,
        ``getenv("DB_PASSWORD", "default")``), on its line and on the lines that continue
        it inside open brackets. A literal used as a key (``headers["X-Auth-Token"]``,
        ``{"user": ...}``) is kept; comments are masked as text. Non-strings pass."""
        out: list[Any] = []
        depth = 0
        inside: tuple[str, bool] | None = None  # an open triple-quoted literal: (quote, secret)
        for line in lines:
            if isinstance(line, str):
                line, depth, inside = self._mask_source_line(line, depth, inside, found)
            out.append(line)
        return out

    def _mask_source_line(
        self, line: str, depth: int, inside: tuple[str, bool] | None, found: set[str] | None
    ) -> tuple[str, int, tuple[str, bool] | None]:
        """One line of :meth:`mask_code`, with triple-quoted literals that span lines
        (a PEM key after ``PRIVATE_KEY =``): what they hold is masked whole when they
        follow a secret-looking name (or continue its open brackets), as text otherwise."""
        head = ""
        if inside is not None:
            quote, secret = inside
            end = line.find(quote)
            body, line = (line, "") if end == -1 else (line[:end], line[end:])
            head = self._literal_part(body, secret, found)
            if end == -1:
                return head, depth, inside
            head, line = head + quote, line[len(quote) :]
        opening = _open_triple_quote(line)
        if opening is None:
            masked, depth = self._mask_code_line(line, depth, found)
            return head + masked, depth, None
        at, quote = opening
        code, body = line[:at], line[at + len(quote) :]
        secret = depth > 0 or self._fragment(code) is not None
        masked, depth = self._mask_code_line(code, depth, found)
        opened = head + masked + quote + self._literal_part(body, secret, found)
        return opened, depth, (quote, secret)

    def _literal_part(self, body: str, secret: bool, found: set[str] | None) -> str:
        if not secret:
            return self.mask(body, found)
        if not body.strip():
            return body
        if found is not None:
            found.add(body.strip())
        return REDACTED

    def mask_traceback(self, text: str) -> str:
        """A formatted traceback with its source lines masked as code, the rest as text."""
        out: list[str] = []
        source_next = False
        for line in text.split("\n"):
            if source_next and line.startswith("    "):
                line = self._mask_code_line(line, 0, None)[0]
                source_next = False
            elif line.startswith('  File "'):
                line = mask_url_credentials(line)  # a path, a line number, a function name
                source_next = True
            else:
                line = self.mask(line)
                source_next = False
            out.append(line)
        return "\n".join(out)

    def _mask_code_line(self, line: str, carry: int, found: set[str] | None) -> tuple[str, int]:
        if "://" in line:
            line = self.mask(line, found) if found is not None else mask_url_credentials(line)
        code, comment = _split_comment(line)
        if comment:
            comment = self.mask(comment, found)
        start = 0 if carry else None
        if start is None:
            hit = self._fragment(code)
            if hit is None:
                return code + comment, 0
            word = self._word_end(code, hit.end())
            start = word.end() if word is not None else hit.end()
        pieces: list[str] = []
        last = 0
        for literal in _LITERAL.finditer(code):
            body = literal["body"]
            if not body or body == REDACTED or _is_key(code, literal):
                continue
            if literal.start() < start:
                # Before the name (or holding it): its own secrets, masked as text
                # (``raise Error("login failed password=hunter2")``).
                replacement = self.mask(body, found)
                if replacement == body:
                    continue
            else:
                if found is not None:
                    found.add(body)
                replacement = REDACTED
            pieces.append(code[last : literal.start("body")])
            pieces.append(replacement)
            last = literal.end("body")
        pieces.append(code[last:])
        bare = _LITERAL.sub("", code)
        opened = len(bare.translate(_DROP_CLOSERS)) - len(bare.translate(_DROP_OPENERS))
        return "".join(pieces) + comment, max(carry + opened, 0)


def _mask_pair(match: re.Match[str], found: set[str] | None) -> str:
    key, sep = match["key"], match["sep"]
    if match["q"] is not None:
        value = match["qvalue"]
        scheme = match["qscheme"]
        tail = match.group(0)[match.end("qvalue") - match.start() :]  # the closing quote
    else:
        raw = match["value"]
        value = _trim_closers(raw)
        scheme = match["scheme"]
        tail = raw[len(value) :]
    if not value or value == REDACTED:
        return match.group(0)
    if (
        not sep.strip()
        and not (scheme or key).lower().rstrip().endswith("bearer")
        and not looks_like_token(value)
    ):
        return match.group(0)  # prose: "token expired", "password reset for ada"
    if found is not None:
        found.add(value)
        trimmed = value.rstrip(".,;:!?")
        if trimmed != value:
            found.add(trimmed)
    return f"{key}{sep}{match['q'] or ''}{scheme or ''}{REDACTED}{tail}"


def _trim_closers(value: str) -> str:
    # "dict(password=abc)": the ")" closes the call, unless the value opened it itself
    while (
        value
        and value[-1] in _CLOSERS
        and value.count(value[-1]) > value.count(_CLOSERS[value[-1]])
    ):
        value = value[:-1]
    return value


def looks_like_token(word: str) -> bool:
    """A word that reads as a credential, not prose: long enough and with a digit, a
    symbol of base64/URL-safe alphabets, or capitals past its first letter."""
    word = word.rstrip(".,;:!?")
    if len(word) < MIN_SECRET_LENGTH:
        return False
    if any(c.isdigit() or c in _TOKEN_CHARS for c in word):
        return True
    return word[1:] != word[1:].lower()


_TRIPLE_QUOTES = ('"' * 3, "'" * 3)


def _open_triple_quote(line: str) -> tuple[int, str] | None:
    """Where a triple-quoted literal that this line does not close opens, and its quote."""
    starts = [(line.find(quote), quote) for quote in _TRIPLE_QUOTES if quote in line]
    if not starts:
        return None
    at, quote = min(starts)
    if line.count(quote, at) % 2 == 0:  # opened and closed on the line (or several)
        return None
    return line.rfind(quote), quote


def _split_comment(line: str) -> tuple[str, str]:
    """``(code, comment)``: the comment starts at a ``#`` outside string literals."""
    if "#" not in line:
        return line, ""
    last = 0
    for literal in _LITERAL.finditer(line):
        sharp = line.find("#", last, literal.start())
        if sharp != -1:
            return line[:sharp], line[sharp:]
        last = literal.end()
    sharp = line.find("#", last)
    return (line, "") if sharp == -1 else (line[:sharp], line[sharp:])


def _is_key(code: str, literal: re.Match[str]) -> bool:
    """A literal used as a key: ``x["name"]`` or ``{"name": ...}``."""
    before = code[: literal.start()].rstrip()
    after = code[literal.end() :].lstrip()
    if before.endswith("[") and after.startswith("]"):
        return True
    return after.startswith(":") and not after.startswith(":=")


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<unrepresentable {type(value).__name__}>"


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_control(text: str) -> str:
    """Escape control characters so that one record stays one line."""
    return text.translate(_CONTROL)
