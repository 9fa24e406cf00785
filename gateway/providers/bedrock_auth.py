"""AWS credentials and SigV4 signing for the ``bedrock`` provider, through botocore.

Credentials come from botocore's standard chain (environment variables, the shared config and
credentials files, ``profile``, SSO, container and instance metadata), or from the provider's explicit
``aws_access_key_id``/``aws_secret_access_key``/``aws_session_token``. The chain may read files or call
a metadata endpoint, so it is walked off the event loop, once, and temporary credentials are refreshed
off the loop as they near expiry; every other request signs with the frozen credentials in memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError

from gateway.errors import UpstreamAuthError

SERVICE = "bedrock"
"""The SigV4 signing name of Bedrock Runtime (its endpoint prefix is ``bedrock-runtime``)."""


def region_of(option: object, profile: str | None) -> str:
    """The region: the provider's ``region``, else ``AWS_REGION``, else botocore's (``AWS_DEFAULT_REGION``,
    the profile's ``region`` in the config file); "" when none is set. Read once, at config load."""
    if isinstance(option, str) and option:
        return option
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    try:
        region = botocore.session.Session(profile=profile).get_config_variable("region")
    except BotoCoreError:
        return ""  # a missing profile is reported when credentials are resolved, with its name
    return region if isinstance(region, str) else ""


class AwsCredentials:
    """One provider's AWS credentials: resolved on first use, refreshed when they near expiry."""

    def __init__(self, provider: str, *, profile: str | None, static: Mapping[str, str] | None) -> None:
        self._provider = provider
        self._profile = profile
        self._source: Credentials | None = None
        if static is not None:
            self._source = Credentials(static["access_key"], static["secret_key"], static.get("token"))
        self._frozen: ReadOnlyCredentials | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> ReadOnlyCredentials:
        """The credentials to sign with now; the chain and refreshes run in a worker thread."""
        frozen = self._frozen
        if frozen is not None:
            source = self._source
            if not isinstance(source, RefreshableCredentials) or not source.refresh_needed():
                return frozen
        async with self._lock:  # one resolution or refresh at a time; the others wait for its result
            source = self._source
            if self._frozen is not None and (
                not isinstance(source, RefreshableCredentials) or not source.refresh_needed()
            ):
                return self._frozen
            self._frozen = await asyncio.to_thread(self._freeze)
            return self._frozen

    def _freeze(self) -> ReadOnlyCredentials:
        """Runs in a worker thread: may read files or call a metadata endpoint."""
        try:
            if self._source is None:
                session = botocore.session.Session(profile=self._profile)
                self._source = session.get_credentials()
            if self._source is None:
                raise UpstreamAuthError(
                    f"upstream '{self._provider}': no AWS credentials found (environment, shared files, "
                    "profile, container or instance metadata); the operator must configure them."
                )
            return self._source.get_frozen_credentials()
        except BotoCoreError as exc:
            raise UpstreamAuthError(
                f"upstream '{self._provider}': AWS credentials could not be loaded: {exc}"
            ) from exc


def sign(
    url: str, headers: Mapping[str, str], body: bytes, credentials: ReadOnlyCredentials, region: str
) -> dict[str, str]:
    """``headers`` plus SigV4's (``authorization``, ``x-amz-date``, ``x-amz-security-token``) for a
    POST of exactly ``body`` to ``url``. Every header given is signed, so send them all unchanged;
    the ``host`` the transport sends is derived from ``url`` the same way."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, SERVICE, region).add_auth(request)
    return {name.lower(): value for name, value in request.headers.items()}
