"""The service's long-lived state: store, registry, batcher, metrics, executors,
and the background work that keeps it ready (startup sync with backoff, bundle
preloading, following the store's change notifications).

Startup never hangs silently: every failed attempt to sync the store (whatever the
error: unreachable, refused commands, a wrong password, a store that needs
migrating, a bug) is logged with its message, shown in ``status`` (the store's
address hidden: ``status`` is public; ``status_detail`` is for the log and for
authenticated callers) and retried with capped exponential backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from pemn.devices import resolve_device
from pemn.store import AsyncStore, NeedsMigration, StoreError, open_async_store
from service.batching import Batcher
from service.images import ImageDecoder, ImageLimits
from service.metrics import Metrics
from service.redact import StoreAddress
from service.registry import Registry
from service.settings import Settings

__all__ = ["ServiceState"]

log = logging.getLogger("service")

_BACKOFF_FIRST_S = 0.25
_BACKOFF_MAX_S = 10.0


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(max_models=settings.metrics_max_models)
        self.device = resolve_device(settings.device)
        if settings.inference_threads:
            torch.set_num_threads(settings.inference_threads)
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="pemn-infer")
        self.load_pool = ThreadPoolExecutor(2, thread_name_prefix="pemn-load")
        self.images = ImageDecoder(
            ImageLimits.from_settings(settings), settings.image_decode_threads
        )
        self.store: AsyncStore = open_async_store(settings.store_url)
        self.store_address = StoreAddress(settings.store_url)
        self.registry = Registry(
            self.store,
            device=self.device,
            cache_bytes=settings.cache_bytes,
            packed_bytes=settings.packed_bytes,
            mixed_mode=settings.mixed_batches,
            onnx_hot_rate=settings.onnx_hot_rate,
            default_runtime=settings.runtime_for(self.device.type),
            runtime_overrides=dict(settings.runtime_overrides),
            metrics=self.metrics,
            load_executor=self.load_pool,
            inference_threads=settings.inference_threads or None,
            channels_last=settings.channels_last,
        )
        self.batcher = Batcher(
            self.infer_pool,
            self.metrics,
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        self.ready = False
        self.status_detail = "starting"
        self.started_at = time.time()
        self._background: list[asyncio.Task[None]] = []

    @property
    def status(self) -> str:
        """The state for anyone: ``status_detail`` without the store's address."""
        return self.store_address.hide(self.status_detail)

    async def start(self) -> None:
        self._spawn(self._startup(), "pemn-startup")

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._crashed)
        self._background.append(task)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.status_detail = f"error: background task {task.get_name()} failed: {exc}"
        log.error("%s", self.status_detail, exc_info=exc)

    async def stop(self) -> None:
        self.ready = False
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.batcher.close()
        await self.store.close()
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.load_pool.shutdown(wait=False, cancel_futures=True)
        self.images.close()

    async def _startup(self) -> None:
        await self._sync_with_backoff()
        if self.settings.preload_dir is not None:
            await self._upload_dir()
        self._spawn(self._follow(), "pemn-watch")
        await self._preload()
        self.ready = True
        self.status_detail = "ready"
        log.info(
            "ready on %s: %d models from %s",
            self.device,
            len(self.registry.catalog),
            self.store.url,
        )

    async def _sync_with_backoff(self) -> None:
        """The first store sync, retried until it succeeds: 0.25 s doubling to 10 s,
        with jitter. Each failure is logged and shown in ``status``."""
        delay = _BACKOFF_FIRST_S
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.registry.sync()
                if attempt > 1:
                    log.info("store answered after %d attempts", attempt)
                return
            except StoreError as exc:
                what = "needs migrating" if isinstance(exc, NeedsMigration) else "not usable"
                self.status_detail = f"waiting for the store (attempt {attempt}): {exc}"
                level = logging.ERROR if isinstance(exc, NeedsMigration) else logging.WARNING
                log.log(
                    level, "store %s (attempt %d): %s; retrying in %.1fs", what, attempt, exc, delay
                )
            except Exception as exc:  # a bug or an unmapped client error: say so, keep trying
                self.status_detail = (
                    f"waiting for the store (attempt {attempt}): {type(exc).__name__}: {exc}"
                )
                log.exception("store sync failed (attempt %d); retrying in %.1fs", attempt, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _upload_dir(self) -> None:
        directory = self.settings.preload_dir
        assert directory is not None
        files = sorted(directory.glob("*.pemn"))
        if not files:
            log.warning("preload_dir %s holds no *.pemn bundles", directory)
        for path in files:
            try:
                result = await self.store.put(path.stem, path.read_bytes())
                self.registry.note_upload(await self.store.info(path.stem))
                log.info(
                    "%s %s as %s v%d",
                    "stored" if result.created else "kept",
                    path.name,
                    path.stem,
                    result.version,
                )
            except (StoreError, OSError) as exc:
                log.error("could not load %s: %s", path, exc)

    async def _preload(self) -> None:
        wanted = self.settings.preload
        names = self.registry.catalog.names() if "*" in wanted else wanted
        for name in names:
            if name not in self.registry.catalog:
                log.warning("preload: model %r is not in the store", name)
                continue
            record = self.registry.latest(name)
            try:
                await self.registry.task(record, self.registry.runtime_for(name))
            except Exception:
                log.exception("preload of %r failed", name)

    async def _follow(self) -> None:
        """Re-sync whenever the store's change marker moves (pub/sub hint or polling)."""
        if not self.settings.store_hints:
            await self._poll()
            return
        markers = self.store.watch(self.settings.poll_interval_s)
        try:
            async for marker in markers:
                if marker == self.registry.synced_epoch:
                    continue
                try:
                    await self.registry.sync()
                except StoreError as exc:
                    log.warning("store sync after change %s failed: %s", marker, exc)
        finally:
            await markers.aclose()  # releases the pub/sub subscription

    async def _poll(self) -> None:
        """Polling only (``PEMN_STORE_HINTS=false``): the fallback when hints are lost."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                if await self.store.marker() != self.registry.synced_epoch:
                    await self.registry.sync()
            except StoreError as exc:
                log.warning("store poll failed: %s", exc)
