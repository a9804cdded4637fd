"""MVMNT freight TMS: ``POST /shipments/{id}/cancel`` with an OAuth2 Bearer token."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import SecretStr, model_validator

from consumer.providers.base import ProviderSettingsBase


class MvmntSettings(ProviderSettingsBase):
    kind: Literal["mvmnt"]
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    access_token: SecretStr | None = None

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Self:
        has_client = self.client_id is not None or self.client_secret is not None
        if self.access_token is not None and has_client:
            raise ValueError("set either access_token or client_id/client_secret, not both")
        if self.access_token is None and not (
            self.token_url and self.client_id and self.client_secret
        ):
            raise ValueError(
                "set access_token, or token_url with client_id and client_secret"
            )
        return self
