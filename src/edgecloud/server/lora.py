"""LoRA adapters on the OpenAI server, in vLLM's conventions (docs/lora.md).

A request's ``model`` names the base model or a loaded adapter; ``/v1/models`` lists both (an
adapter with ``parent`` = the base model and ``root`` = its directory); ``POST
/v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter``
``{"lora_name"}`` change the set at run time. Adapters given at start (``--lora-modules``) and
loaded at run time are kept in the engine's configuration, so a restarted engine core loads them
again. An unknown adapter is a 404 in OpenAI's error body; a bad adapter a 400 naming the field.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from edgecloud.llm import AsyncEngine
from edgecloud.server.errors import APIError

log = logging.getLogger(__name__)


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    pinned: bool = False  # kept in host memory whatever else is loaded


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    lora_name: str = Field(min_length=1)


class LoRAAdapters:
    """The server's view of the engine's adapters: name -> directory (None: received from a peer)."""

    def __init__(self, engine: AsyncEngine, base_model: str) -> None:
        self.engine = engine
        self.base_model = base_model
        self.paths: dict[str, str | None] = {}

    @property
    def enabled(self) -> bool:
        config = getattr(self.engine, "config", None)  # a cluster front end has none of its own
        return bool(config is not None and config.enable_lora)

    async def refresh(self) -> None:
        """Reads the adapters the engine core holds (after it started)."""
        if self.enabled:
            listed = await self.engine.control("list_lora_adapters")
            self.paths = {a["name"]: a["path"] for a in listed}

    def resolve(self, model: str) -> str | None:
        """The adapter a request's ``model`` names, or None for the base model; 404 otherwise."""
        if model == self.base_model:
            return None
        if model in self.paths:
            return model
        served = ", ".join(repr(m) for m in [self.base_model, *self.paths])
        raise APIError(404, f"model {model!r} does not exist; this server serves {served}", "model",
                       "model_not_found")

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise APIError(400, "LoRA is not enabled on this server (start it with --enable-lora or --lora-modules)",
                           "lora_name", "lora_disabled")

    async def load(self, body: LoadLoRAAdapterRequest) -> str:
        self._require_enabled()
        if body.lora_name == self.base_model:
            raise APIError(400, f"lora_name {body.lora_name!r} is the base model's name", "lora_name")
        if body.lora_name in self.paths:
            raise APIError(400, f"LoRA adapter {body.lora_name!r} is already loaded", "lora_name",
                           "adapter_already_loaded")
        info = await self.engine.control("load_lora_adapter", lora_name=body.lora_name, lora_path=body.lora_path,
                                         pinned=body.pinned)
        self.paths[body.lora_name] = body.lora_path
        config = self.engine.config
        config.lora_modules = (*config.lora_modules, (body.lora_name, body.lora_path))
        log.info("LoRA adapter %s loaded from %s (rank %d, %d bytes)", body.lora_name, body.lora_path, info["rank"],
                 info["bytes"])
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    async def unload(self, body: UnloadLoRAAdapterRequest) -> str:
        self._require_enabled()
        if body.lora_name not in self.paths:
            raise APIError(404, f"LoRA adapter {body.lora_name!r} is not loaded", "lora_name", "model_not_found")
        await self.engine.control("unload_lora_adapter", lora_name=body.lora_name)
        del self.paths[body.lora_name]
        config = self.engine.config
        config.lora_modules = tuple((n, p) for n, p in config.lora_modules if n != body.lora_name)
        log.info("LoRA adapter %s unloaded", body.lora_name)
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    def model_cards(self, created: int, max_model_len: int) -> list[dict[str, Any]]:
        return [{"id": name, "object": "model", "created": created, "owned_by": "edgecloud", "root": path,
                 "parent": self.base_model, "max_model_len": max_model_len} for name, path in self.paths.items()]


def install_lora_routes(app: FastAPI, adapters: LoRAAdapters) -> None:
    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        return PlainTextResponse(await adapters.load(body))

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        return PlainTextResponse(await adapters.unload(body))
