"""Authentication of the plugin's endpoints: the same JWT as Airflow's REST API, checked by Airflow."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from asgard.airflow_api import AirflowApi

bearer = HTTPBearer(
    auto_error=False,
    description="The JWT of Airflow's REST API: `POST /auth/token` with the Airflow user and password.",
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def caller_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The caller's Airflow JWT (bearer header, else the Airflow UI's session cookie), once Airflow accepts it.

    Plugin apps are mounted without Airflow's own auth dependencies, so every route depends on this.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from jwt import ExpiredSignatureError, InvalidTokenError

    if credentials is not None and credentials.scheme.lower() == "bearer":
        token = credentials.credentials
    else:
        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise _unauthorized("not authenticated: send Airflow's JWT as 'Authorization: Bearer <token>'")
    try:
        await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise _unauthorized("the token has expired: get a new one from POST /auth/token") from None
    except InvalidTokenError:
        raise _unauthorized("the token is not one this Airflow issued") from None
    return token


CallerToken = Annotated[str, Depends(caller_token)]


def airflow_as_caller(request: Request, token: CallerToken) -> AirflowApi:
    """Airflow's REST API on this same server, acting as the caller (their permissions, their name on runs)."""
    # The app is mounted under a prefix (root_path ends with it); Airflow's API is one level up.
    server_root = request.scope.get("root_path", "").rsplit("/", 1)[0]
    return AirflowApi(f"{request.url.scheme}://{request.url.netloc}{server_root}", token)


CallerAirflow = Annotated[AirflowApi, Depends(airflow_as_caller)]
