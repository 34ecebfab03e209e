"""What the HTTP handlers share: settings, the model store, the registry, the
accounts (counters, key store, usage ledger: ``accounts.interfaces``), the
downloader and the gateway's tokenizer pool."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from accounts.interfaces import Counters, KeyStore, UsageLedger
from engine.downloads import Downloader
from engine.registry import Registry
from engine.store import ModelSpec, ModelStore
from gateway.auth import Authenticator
from gateway.cluster import Cluster
from gateway.console.assets import ConsoleAssets
from gateway.console.sessions import Sessions
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.events import RecentEvents
from gateway.settings import Settings
from gateway.tokens import Tokenizers

# Catalogue ids, aliases and hub repos ("org/name"): letters, digits and ._-:/@ only.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,255}$")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    store: ModelStore
    registry: Registry
    auth: Authenticator
    counters: Counters
    keys: KeyStore | None
    ledger: UsageLedger | None
    downloader: Downloader | None = None
    tokenizers: Tokenizers | None = None
    cluster: Cluster | None = None  # the other gateways (``cluster.node_url`` set)
    events: RecentEvents = field(default_factory=RecentEvents)
    sessions: Sessions = field(default_factory=lambda: Sessions(3600.0))  # the console's
    assets: ConsoleAssets = field(default_factory=ConsoleAssets)

    def cache_partition(self, key_id: str) -> str:
        """The prompt-cache partition of a key: its own, or its operator-named group's."""
        for group, members in self.settings.engine.prompt_cache_groups.items():
            if key_id in members:
                return f"group:{group}"
        return f"key:{key_id}"

    def resolve_model(self, name: str) -> ModelSpec:
        """The catalogue model a request names; 400 for a malformed name, 404 if unknown."""
        if not MODEL_NAME.fullmatch(name) or ".." in name:
            raise InvalidRequest(f"`{name[:80]}` is not a valid model name.", param="model")
        spec = self.store.resolve(name) or self.hub_spec(name)
        if spec is None:
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return spec

    def hub_spec(self, name: str) -> ModelSpec | None:
        """A model named by a hub repo id that the catalogue does not know (yet): it
        may be downloaded, if policy allows, when downloads are enabled."""
        if self.downloader is None or not REPO_ID.fullmatch(name):
            return None
        folder = self.downloader.cache_dir / ("models--" + name.replace("/", "--"))
        return ModelSpec(
            id=name,
            path=folder / "snapshots" / "pending",
            owned_by=name.split("/")[0],
            repo=name,
            revision="main",
        )
