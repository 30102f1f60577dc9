"""The settings of who may do what: teams, users, the data and connections requests may name, who decides a
deployment (a part of :class:`asgard.core.settings.Settings`, read the same way)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

# Team and user names: plain words, safe in paths, tags and the auth manager's "user:role:team" list.
# Airflow's own rule for a team's name (``airflow teams create``): 3 to 50 letters, digits, '_' or '-'.
TEAM_NAME = re.compile(r"[A-Za-z0-9_-]{3,50}")
TEAM_LIST = re.compile(r"\*|[A-Za-z0-9_-]{3,50}(\|[A-Za-z0-9_-]{3,50})*")
USER_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,100}")
AIRFLOW_ROLES = ("viewer", "user", "op", "admin")


class TeamSettings(BaseSettings):
    # Where a request may read or write data files (score_batch's output and entity source, monitor_model's
    # sources and labels): comma-separated local folders and s3:// prefixes, each holding one folder per team
    # (<root>/<team>/: a run reads and writes only its model's team's). Default: <home>/data (its internal
    # folders, such as the gold layer, stay out of reach either way; production: s3://<s3_bucket>/data).
    data_roots: str = ""
    # The AWS connections a request may name (aws_conn_id): comma-separated connection ids.
    allowed_aws_conn_ids: str = "aws_default"
    # What a promotion does (asgard.deploy.approval; a model's own policy overrides these): auto, it
    # deploys; approve, a person of the model's team decides within the timeout (seconds; then it is
    # rejected); manual, nothing deploys until someone triggers deploy_model. Approvers: who decides
    # beside the auth manager's admins (user names); the second-person rule keeps a version's trainer out.
    deploy_policy: Literal["auto", "approve", "manual"] = "approve"
    # How a promotion that deploys rolls out (a model's own rollout overrides it): canary, a share of live
    # traffic decides (with deploy_model's default window and limits); replace; shadow. A first deploy,
    # with nothing serving to try it beside, replaces.
    promotion_strategy: Literal["replace", "canary", "shadow"] = "canary"
    deploy_approval_timeout: int = Field(86_400, ge=1)
    deploy_approvers: str = ""
    deploy_second_person: bool = False
    # Teams (asgard.core.teams): the team of models registered by admins and by runs no person started,
    # and of models from before teams; with an auth manager other than the simple one, who belongs to
    # which team ("alice=a;bob=b|c;root=*", * an admin). The simple auth manager's users list says it
    # itself ("alice:user:a|c").
    default_team: str = "default"
    team_members: str = ""
    # More users of the embedded and production profiles' Airflow (its simple auth manager), each with a
    # generated password in the passwords file: "alice:user:a,bob:user:b|c" (role: viewer, user, op, admin).
    airflow_users: str = ""

    @field_validator("default_team")
    @classmethod
    def _team_name(cls, team: str) -> str:
        if not TEAM_NAME.fullmatch(team):
            raise ValueError(f"must be a team name (3 to 50 letters, digits, '_' or '-'), got {team!r}")
        return team

    @field_validator("team_members")
    @classmethod
    def _team_members(cls, text: str) -> str:
        # The format asgard.core.teams.parse_team_members reads: a bad entry is named now, not met as a stranger.
        for entry in (item.strip() for item in text.split(";") if item.strip()):
            name, sep, teams = entry.partition("=")
            if not (sep and USER_NAME.fullmatch(name.strip()) and TEAM_LIST.fullmatch(teams.strip())):
                raise ValueError(f"entry {entry!r} is not 'user=team1|team2' (or 'user=*' for an admin)")
        return text

    @field_validator("airflow_users")
    @classmethod
    def _airflow_users(cls, text: str) -> str:
        for entry in (item.strip() for item in text.split(",") if item.strip()):
            name, _, rest = entry.partition(":")
            role, _, teams = rest.partition(":")
            if (
                not USER_NAME.fullmatch(name)
                or role.lower() not in AIRFLOW_ROLES
                or (teams and not TEAM_LIST.fullmatch(teams))
                or teams == "*"
            ):
                raise ValueError(
                    f"entry {entry!r} is not 'user:role[:team1|team2]' (role: {', '.join(AIRFLOW_ROLES)}; a team: "
                    "3 to 50 letters, digits, '_' or '-', Airflow's rule)"
                )
        return text

    @property
    def airflow_user_list(self) -> list[str]:
        return [item.strip() for item in self.airflow_users.split(",") if item.strip()]


def settings_problems(error: Any, prefix: str) -> str:
    """A settings error (pydantic's ValidationError) in the user's terms: the variable, what it must be, what
    it was."""
    problems = []
    for item in error.errors():
        variable = f"{prefix}{str(item['loc'][0]).upper()}"
        got = item.get("input")
        if item["type"] == "int_parsing":
            problems.append(f"{variable} must be an integer, got {got!r}")
        elif item["type"] == "literal_error":
            expected = item["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
            problems.append(f"{variable} must be one of {expected}, got {got!r}")
        else:
            problems.append(f"{variable} {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
