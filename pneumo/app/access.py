"""Who may use pneumo: sign-in (Streamlit's OpenID Connect), roles, and who an action is by.

Sign-in is off unless ``.streamlit/secrets.toml`` has an ``[auth]`` section (README, "Sign-in and
audit"). With it, every page asks for sign-in first (:func:`pneumo.app.ui.run_app` calls
:func:`gate` before anything else); the role comes from one claim of the identity token
(:func:`role_of`). Without it, pneumo is a laptop tool: whoever runs it administers it.

The functions above :func:`gate` take plain mappings, so they are tested without a browser.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import streamlit as st

from pneumo import audit, config

READER = "reader"  # read X-rays, the threshold explorer, the model card
ADMIN = "administrator"  # also site calibration, the department's threshold, the audit page
ROLE_NAMES = {READER: "reader", ADMIN: "administrator"}

_PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
_SHARED_KEYS = ("redirect_uri", "cookie_secret", "expose_tokens", "client_kwargs")


@dataclass(frozen=True)
class RoleRules:
    """Which token claim holds the roles, and which of its values make each role."""

    claim: str = config.ROLE_CLAIM
    reader: tuple[str, ...] = config.READER_ROLES
    admin: tuple[str, ...] = config.ADMIN_ROLES


class ConfigurationError(ValueError):
    """The sign-in or role configuration is wrong: one message saying what to fix."""


def _strings(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigurationError(f"{where} must be a list of role names, e.g. [\"pneumo-reader\"].")


def role_rules(secrets: Mapping) -> RoleRules:
    """``[pneumo.roles]`` of the secrets (``claim``, ``reader``, ``admin``), else config.py's."""
    pneumo_section = secrets.get("pneumo", {})
    section = pneumo_section.get("roles", {}) if isinstance(pneumo_section, Mapping) else None
    if not isinstance(section, Mapping):
        raise ConfigurationError("[pneumo.roles] in .streamlit/secrets.toml must be a table "
                                 "(claim = \"roles\", reader = [...], admin = [...]).")
    unknown = sorted(set(section) - {"claim", "reader", "admin"})
    if unknown:
        raise ConfigurationError(f"[pneumo.roles] has unknown keys {unknown}; it takes claim, "
                                 "reader and admin.")
    claim = section.get("claim", config.ROLE_CLAIM)
    if not isinstance(claim, str) or not claim.strip():
        raise ConfigurationError("[pneumo.roles] claim must name a claim of the identity token, "
                                 "e.g. \"roles\" or \"realm_access.roles\".")
    return RoleRules(claim=claim.strip(),
                     reader=_strings(section.get("reader", config.READER_ROLES),
                                     "[pneumo.roles] reader"),
                     admin=_strings(section.get("admin", config.ADMIN_ROLES),
                                    "[pneumo.roles] admin"))


def claim_values(claims: Mapping, claim: str) -> set[str]:
    """The values of a claim: a list, or one string (space- or comma-separated values); a dotted
    name reads a nested claim (Keycloak's ``realm_access.roles``)."""
    value = claims
    for part in claim.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return set()
        value = value[part]
    if isinstance(value, str):
        return {v for v in value.replace(",", " ").split() if v}
    if isinstance(value, list | tuple | set):
        return {str(v) for v in value}
    return set()


def role_of(claims: Mapping, rules: RoleRules) -> str | None:
    """ADMIN, READER, or None (no access) for a signed-in user's claims."""
    values = claim_values(claims, rules.claim)
    if values & set(rules.admin):
        return ADMIN
    if values & set(rules.reader):
        return READER
    return None


def sign_in_configured(secrets: Mapping) -> bool:
    return "auth" in secrets


def providers(auth: Mapping) -> list[str]:
    """The providers a user can sign in with: ``[]`` for the default one (client settings in
    ``[auth]`` itself), else the names of the ``[auth.<name>]`` tables."""
    if any(k in auth for k in _PROVIDER_KEYS):
        return []
    return sorted(k for k, v in auth.items() if isinstance(v, Mapping) and k not in _SHARED_KEYS)


def auth_problem(secrets: Mapping) -> str | None:
    """What is wrong with ``[auth]`` (and ``[pneumo.roles]``), in one message; None when sign-in
    is off or configured well enough to try. Checked before any page, so a wrong secret gives
    this message instead of Streamlit's error at the first sign-in."""
    if not sign_in_configured(secrets):
        return None
    auth = secrets["auth"]
    if not isinstance(auth, Mapping):
        return "[auth] in .streamlit/secrets.toml must be a table."
    missing = [k for k in ("redirect_uri", "cookie_secret") if not auth.get(k)]
    if missing:
        return f"[auth] is missing {', '.join(missing)}."
    redirect = urlparse(str(auth["redirect_uri"]))
    if redirect.scheme not in ("http", "https") or not redirect.netloc \
            or not redirect.path.endswith("/oauth2callback"):
        return ("[auth] redirect_uri must be pneumo's own address ending in /oauth2callback, "
                "e.g. https://pneumo.example.org/oauth2callback.")
    if len(str(auth["cookie_secret"])) < 32:
        return "[auth] cookie_secret must be a random string of 32 characters or more."
    names = providers(auth)
    sections = [("[auth]", auth)] if not names else [(f"[auth.{n}]", auth[n]) for n in names]
    if not names and not any(k in auth for k in _PROVIDER_KEYS):
        return ("[auth] names no identity provider: add client_id, client_secret and "
                "server_metadata_url to it (or an [auth.<provider>] table holding them).")
    for where, section in sections:
        if "_" in where:
            return f"{where}: a provider's name cannot contain '_' (Streamlit's rule)."
        missing = [k for k in _PROVIDER_KEYS if not section.get(k)]
        if missing:
            return f"{where} is missing {', '.join(missing)}."
        metadata = urlparse(str(section["server_metadata_url"]))
        if metadata.scheme not in ("http", "https") or not metadata.netloc:
            return (f"{where} server_metadata_url must be the provider's absolute address of "
                    "/.well-known/openid-configuration.")
    try:
        role_rules(secrets)
    except ConfigurationError as err:
        return str(err)
    try:
        import authlib  # noqa: F401  (Streamlit's sign-in needs it)
    except ImportError:
        return "Sign-in needs Authlib: pip install -r requirements.txt."
    return None


@dataclass(frozen=True)
class Access:
    """This session's user: who (for the audit trail) and what they may do."""

    actor: audit.Actor
    role: str | None  # ADMIN, READER or None (signed in with neither role)
    signed_in: bool  # False: sign-in is off (laptop mode)
    name: str = ""  # what the sidebar shows

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def laptop_access() -> Access:
    """Sign-in off: the person at the laptop administers their own copy; records name the
    operating-system user and host of the server."""
    return Access(actor=audit.Actor.from_os(), role=ADMIN, signed_in=False)


def user_access(claims: Mapping, rules: RoleRules) -> Access:
    """A signed-in user: subject and e-mail from the identity token, role from its claim."""
    subject = str(claims.get("sub") or claims.get("email") or "unknown")
    email = claims.get("email")
    name = str(claims.get("name") or email or subject)
    return Access(actor=audit.Actor(subject=subject, email=str(email) if email else None,
                                    host=socket.gethostname()),
                  role=role_of(claims, rules), signed_in=True, name=name)


# --- Streamlit side ---

_ACCESS_KEY = "pneumo_access"


def secrets() -> dict:
    """``st.secrets`` as a dict: {} without a secrets file; a broken file stops the run with
    one sentence."""
    try:
        return st.secrets.to_dict()
    except FileNotFoundError as err:  # Streamlit's StreamlitSecretNotFoundError: none, or unparsable
        text = str(err)
        if text.startswith("No secrets found"):
            return {}
        _stop(f"The secrets cannot be read: {text.splitlines()[0] if text else type(err).__name__}")
    return {}


def _nothing() -> None:
    """The one page a stopped run registers (never run)."""


def _no_pages(title: str) -> None:
    """Register one hidden page, so Streamlit lists none of pneumo's pages (its own listing of
    the pages/ folder would name them to a signed-out visitor)."""
    st.navigation([st.Page(_nothing, title=title, url_path="pneumo")], position="hidden")


def _stop(message: str) -> None:
    _no_pages("pneumo")
    st.error(f"**pneumo cannot start.** {message} See README, \"Sign-in and audit\".",
             icon=":material/error:")
    st.stop()


def gate(forget_session: Callable[[], None]) -> Access:
    """Who this session is, or stop the run: a sign-in page when signed out, a "no access" page
    for a user with neither role, one message for a wrong configuration. Shows who is signed in,
    with a sign-out, on the sidebar (or that sign-in is off). ``forget_session`` is called on
    sign-out, before the identity cookie goes."""
    found = secrets()
    if not sign_in_configured(found):
        access = laptop_access()
        st.sidebar.caption("Sign-in is off (no [auth] in .streamlit/secrets.toml): anyone who "
                           "reaches this address can use pneumo.")
        st.session_state[_ACCESS_KEY] = access
        return access
    problem = auth_problem(found)
    if problem:
        _stop(problem)
    if not st.user.is_logged_in:
        st.session_state.pop(_ACCESS_KEY, None)
        forget_session()  # e.g. the identity cookie expired
        _no_pages("Sign in")
        _sign_in_page(found["auth"])
        st.stop()
    access = user_access(st.user.to_dict(), role_rules(found))
    st.session_state[_ACCESS_KEY] = access
    with st.sidebar.container(key="signed-in"):
        role = ROLE_NAMES.get(access.role, "no access")
        st.caption(f"Signed in as **{access.name}** ({role})")
        st.button("Sign out", key="sign_out", icon=":material/logout:",
                  on_click=_sign_out, args=(forget_session,))
    if access.role is None:
        _no_pages("No access")
        _no_access_page(access)
        st.stop()
    return access


def _sign_out(forget_session) -> None:
    forget_session()
    st.session_state.pop(_ACCESS_KEY, None)
    st.logout()


def _sign_in_page(auth: Mapping) -> None:
    st.title("pneumo")
    st.markdown("Sign in with your hospital account to read chest X-rays.")
    names = providers(auth)
    for name in names or [None]:
        label = "Sign in" if name is None else f"Sign in with {name}"
        st.button(label, key=f"sign_in_{name or 'default'}", type="primary",
                  icon=":material/login:", on_click=st.login, args=() if name is None else (name,))


def _no_access_page(access: Access) -> None:
    st.title("No access")
    st.error(f"You are signed in as {access.name}, but your account has no pneumo role. Ask "
             "the department's pneumo administrator to give you the reader role.",
             icon=":material/block:")


def current() -> Access:
    """This session's access as the gate found it (laptop mode when the gate has not run: a
    helper called outside the app)."""
    found = st.session_state.get(_ACCESS_KEY)
    return found if isinstance(found, Access) else laptop_access()
