"""The service's long-lived state: store, registry, batcher, metrics, executors,
and the background work that keeps it ready (startup sync with backoff, bundle
preloading, following the store's change notifications)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from pemn.devices import resolve_device
from pemn.store import AsyncStore, NeedsMigration, StoreError, Unavailable, open_async_store
from service.batching import Batcher
from service.images import ImageDecoder, ImageLimits
from service.metrics import Metrics
from service.registry import Registry
from service.settings import Settings

__all__ = ["ServiceState"]

log = logging.getLogger("service")


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
        self.registry = Registry(
            self.store,
            device=self.device,
            cache_bytes=settings.cache_bytes,
            packed_bytes=settings.packed_bytes,
            mixed_mode=settings.mixed_batches,
            onnx_hot_rate=settings.onnx_hot_rate,
            default_runtime=settings.runtime,
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
        self.status = "starting"
        self.started_at = time.time()
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._background.append(asyncio.create_task(self._startup(), name="pemn-startup"))

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
        delay = 0.25
        while True:
            try:
                await self.registry.sync()
                break
            except NeedsMigration as exc:  # a deployment error: say so, stay unready
                self.status = f"error: {exc}"
                log.error("%s", exc)
                return
            except Unavailable as exc:
                self.status = f"waiting for the store: {exc}"
                log.warning("store not reachable yet (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self.settings.preload_dir is not None:
            await self._upload_dir()
        self._background.append(asyncio.create_task(self._follow(), name="pemn-watch"))
        await self._preload()
        self.ready = True
        self.status = "ready"
        log.info(
            "ready on %s: %d models from %s",
            self.device,
            len(self.registry.catalog),
            self.store.url,
        )

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
