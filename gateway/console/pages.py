"""The console's pages: sign-in, a key holder's own page, and the admin pages.

Every page and form goes through ``signed_in`` (the session cookie, then the
key re-authenticated as the API does) and every state change through
``checked_form`` (the session's CSRF token, compared in constant time).  Admin
pages need the ``admin`` scope exactly as ``/admin/*`` does, and their actions
call the same functions as the admin API: what a key cannot do through the API
it cannot do here.  Errors render as HTML pages with the error's own status.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template import TemplateConfig

from engine.memory import format_bytes
from gateway.auth import Authenticator
from gateway.console.sessions import COOKIE, LOGIN_COOKIE, Session, same_token
from gateway.context import AppContext
from gateway.errors import AuthenticationFailed, GatewayError, PermissionDenied
from policies.principal import Principal

TEMPLATES = Path(__file__).parent / "templates"
HTMX_PATH = "/ui/static/htmx.min.js"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class NotSignedIn(AuthenticationFailed):
    code = "not_signed_in"


class CsrfRefused(PermissionDenied):
    code = "csrf_failed"


@dataclass(frozen=True)
class Signed:
    token: str
    session: Session
    principal: Principal

    @property
    def admin(self) -> bool:
        return "admin" in self.principal.scopes


def context(request: Request) -> AppContext:
    return request.app.state.ctx  # type: ignore[no-any-return]


async def authenticate(auth: Authenticator, credential: str | None) -> Principal:
    if auth.enabled and credential and credential.startswith("gw-"):
        return await asyncio.to_thread(auth.authenticate, credential)
    return auth.authenticate(credential)


async def signed_in(request: Request, *, admin: bool = False) -> Signed:
    """The signed-in key of this browser, checked again now; ``NotSignedIn`` (401) or,
    for an admin page, ``PermissionDenied`` (403)."""
    ctx = context(request)
    token = request.cookies.get(COOKIE)
    session = ctx.sessions.get(token, time.time())
    if session is None or token is None:
        raise NotSignedIn("Sign in with your API key.")
    try:
        principal = await authenticate(ctx.auth, session.credential)
    except AuthenticationFailed:
        ctx.sessions.end(token)
        raise NotSignedIn("Your key was revoked or has expired; sign in again.") from None
    if principal.key_id != session.key_id:
        ctx.sessions.end(token)
        raise NotSignedIn("Sign in again.")
    request.scope["user"] = principal  # recent events name the key
    signed = Signed(token, session, principal)
    if admin and not signed.admin:
        raise PermissionDenied(
            "This page needs the `admin` scope.", code="missing_scope", param="admin"
        )
    return signed


async def checked_form(request: Request, signed: Signed) -> dict[str, list[str]]:
    """The posted form, after its CSRF token and origin are checked (403 otherwise)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise CsrfRefused("Cross-site form posts are refused.")
    form = await request.form()
    fields = {key: form.getall(key) for key in form}
    given = (fields.get("csrf") or [request.headers.get("x-csrf-token", "")])[0]
    if not same_token(given if isinstance(given, str) else None, signed.session.csrf):
        raise CsrfRefused("The form's security token is missing or stale; reload the page.")
    return {k: [v for v in vs if isinstance(v, str)] for k, vs in fields.items()}


def field(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name) or [default]
    return values[0].strip()


def render(
    request: Request,
    template: str,
    signed: Signed | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> Template:
    ctx = context(request)
    page: dict[str, Any] = {
        "me": signed.principal if signed else None,
        "admin": signed.admin if signed else False,
        "csrf": signed.session.csrf if signed else "",
        "htmx": HTMX_PATH if ctx.assets.htmx is not None else None,
        "path": request.url.path,
        "now": time.time(),
        **values,
    }
    return Template(
        template_name=template,
        context=page,
        status_code=status,
        headers={**SECURITY_HEADERS, **(headers or {})},
        media_type="text/html",
    )


def error_page(request: Request, error: GatewayError) -> Response[Any]:
    """An error of a console route, as a page (or a redirect to sign-in)."""
    if isinstance(error, NotSignedIn) or error.status == 401:
        if request.headers.get("hx-request"):
            return Response(b"", status_code=401, headers={"HX-Redirect": "/ui/login"})
        return Redirect("/ui/login", status_code=303)
    return render(request, "error.html", None, status=error.status, error=error)


def secure_cookies(request: Request) -> bool:
    return request.url.scheme == "https"


@get("/ui/login")
async def login_form(request: Request) -> Template:
    nonce = _nonce()
    response = render(request, "login.html", None, nonce=nonce, message="")
    response.cookies.append(_login_cookie(request, nonce))
    return response


def _nonce() -> str:
    return secrets.token_urlsafe(24)


def console_cookie(request: Request, key: str, value: str, max_age: int) -> Cookie:
    """A console cookie: HttpOnly, SameSite=Strict, Path=/ui, Secure over TLS."""
    return Cookie(
        key=key,
        value=value,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
        max_age=max_age,
    )


def _login_cookie(request: Request, nonce: str) -> Cookie:
    return console_cookie(request, LOGIN_COOKIE, nonce, 900)


@post("/ui/login", status_code=303)
async def login(request: Request) -> Response[Any]:
    ctx = context(request)
    form = await request.form()
    nonce = form.get("nonce")
    if not isinstance(nonce, str) or not same_token(nonce, request.cookies.get(LOGIN_COOKIE, "")):
        raise CsrfRefused("The sign-in form expired; reload the page.")
    credential = form.get("key")
    credential = credential.strip() if isinstance(credential, str) else ""
    try:
        principal = await authenticate(ctx.auth, credential or None)
    except AuthenticationFailed as exc:
        fresh = _nonce()
        page = render(request, "login.html", None, status=401, nonce=fresh, message=exc.message)
        page.cookies.append(_login_cookie(request, fresh))
        return page
    token, _ = ctx.sessions.create(
        principal.key_id, credential if ctx.auth.enabled else None, time.time()
    )
    response = Redirect("/ui", status_code=303)
    response.cookies.append(console_cookie(request, COOKIE, token, int(ctx.sessions.ttl)))
    response.cookies.append(Cookie(key=LOGIN_COOKIE, value="", path="/ui", max_age=0))
    return response


@post("/ui/logout", status_code=303)
async def logout(request: Request) -> Response[Any]:
    signed = await signed_in(request)
    await checked_form(request, signed)
    context(request).sessions.end(signed.token)
    response = Redirect("/ui/login", status_code=303)
    response.cookies.append(Cookie(key=COOKIE, value="", path="/ui", max_age=0))
    return response


@get("/ui/static/htmx.min.js")
async def htmx_script(request: Request) -> Response[bytes]:
    path = context(request).assets.htmx
    if path is None:
        raise RouteNotFoundHtml("htmx is not available on this gateway.")
    body = await asyncio.to_thread(path.read_bytes)
    return Response(
        body,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@get("/ui/static/console.css")
async def stylesheet() -> Response[bytes]:
    return Response(
        (TEMPLATES / "console.css").read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600"},
    )


class RouteNotFoundHtml(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja over ``templates/``, autoescaping everything, with the console's filters."""
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    environment.filters["bytes"] = format_bytes
    environment.filters["when"] = when
    return TemplateConfig(engine=JinjaTemplateEngine.from_environment(environment))


def when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


ROUTES = [login_form, login, logout, htmx_script, stylesheet]
