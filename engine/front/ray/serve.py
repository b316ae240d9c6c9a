"""crossrank on Ray Serve: the ``crossrank serve`` FastAPI app (``crossrank.front.serve.app``)
as a Serve deployment, one copy of the models and one scheduler per replica.

Each replica builds the same app ``crossrank serve`` runs (``@serve.ingress`` with
``__serve_build_asgi_app__``), loads and warms its models before Serve routes to it, and answers
the same endpoints through Serve's HTTP proxy. Layout (``replica_layout``, ``deployment_options``):
the served layout's workers as replicas (``--replicas``, else the default model's runtime.json
"serve" layout, else one per physical core), CPU replicas reserving its ``threads`` CPUs each
(intra-op threads = reserved CPUs) and running ``--workers`` (default 1) scheduler workers, CUDA
replicas one GPU;
``max_ongoing_requests`` follows the scheduler's token bound; fixed ``num_replicas`` or
autoscaling between two bounds.

Artifacts are read from a path every node sees (a shared volume, or object storage mounted at the
same path). The driver records the sha256 of each artifact's ``manifest.json`` when it builds the
application; every replica checks it sees that same manifest, then loading verifies every file
against it (as ``crossrank serve`` does), so a node with a stale or partial copy fails to start
instead of serving another model.

Three ways in:

- ``crossrank serve --ray [--replicas N] [--max-replicas M] [--ray-address auto]`` (``run_on_ray``);
- ``serve run``/``serve deploy`` a config file whose application names ``import_path:
  crossrank.front.ray.serve:app_builder`` with the ``crossrank serve`` settings as ``args``
  (``deploy/ray-serve.yaml`` is a documented one);
- Python: ``serve.run(build_application(ServeConfig(reranker=...), RayConfig(replicas=2)))``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import ray
from ray import serve

from crossrank.artifact import sha256_file
from crossrank.errors import ArtifactError, InvalidArgumentError, MissingFileError
from crossrank.front.ray.config import RayConfig, deployment_options, replica_layout
from crossrank.front.serve.app import build_app
from crossrank.front.serve.config import ServeConfig
from crossrank.front.serve.errors import NotReady

log = logging.getLogger("crossrank.ray")

APP_NAME = "crossrank"
DEPLOYMENT_NAME = "crossrank"
STATUS_CACHE_S = 0.5  # /health asks the Serve controller at most this often per replica


def _artifacts(config: ServeConfig) -> dict[str, Path]:
    """"<kind> <name>" -> artifact folder, for every model the config names."""
    return {f"{what} {name}": Path(path) for what in ("reranker", "embedder") for name, path in getattr(config, what).items()}


def manifest_digests(config: ServeConfig) -> dict[str, str]:
    """The sha256 of ``manifest.json`` of each artifact the config names, as this machine sees it."""
    digests = {}
    for what, path in _artifacts(config).items():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise MissingFileError(f"{what} {str(path)!r} has no manifest.json: expected an artifact folder "
                                   f"(crossrank export)")
        digests[what] = sha256_file(manifest)
    return digests


def _check_same_artifacts(config: ServeConfig, expected: dict[str, str]) -> None:
    folders = _artifacts(config)
    if set(folders) != set(expected):
        raise ArtifactError(f"this replica's models {sorted(folders)} are not the ones the application was built "
                            f"with {sorted(expected)}")
    for what, digest in expected.items():
        manifest = folders[what] / "manifest.json"
        seen = sha256_file(manifest) if manifest.is_file() else "no manifest.json"
        if seen != digest:
            raise ArtifactError(f"{what} {str(manifest)!r} on this node has sha256 {seen}, the application was built "
                                f"with {digest}: every node must see the same artifact at the same path (a shared "
                                f"volume, or the same copy on each node)")


def _reserved_cpus() -> int | None:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


@serve.ingress()
class CrossrankReplica:
    """One replica: the ``crossrank serve`` app and its models (loaded before Serve routes to it)."""

    async def __init__(self, config: ServeConfig, manifests: dict[str, str]):
        _check_same_artifacts(config, manifests)
        if config.threads is None and config.device == "cpu":
            # intra-op threads = the CPUs Serve reserved for this replica (ray_actor_options.num_cpus)
            config = dataclasses.replace(config, threads=_reserved_cpus())
        self.config = config
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.app_name, self.deployment = context.app_name, context.deployment
        self._status: tuple[float, dict] | None = None
        self._status_lock = asyncio.Lock()
        self.crossrank_app = build_app(config, health_details=self.health_details)
        if not self.crossrank_app.state.keys:
            log.warning("replica %s has no API keys (api_key_file): every caller that reaches Serve's proxy is "
                        "served", self.replica)
        models = self.crossrank_app.state.models
        await asyncio.to_thread(models.load)
        if models.error is not None:  # Serve reports the replica as failed to start and retries
            raise models.error

    def __serve_build_asgi_app__(self):
        return self.crossrank_app

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose models failed is replaced."""
        error = self.crossrank_app.state.models.error
        if error is not None:
            raise NotReady(f"crossrank models failed: {error}")

    async def health_details(self) -> dict:
        """This replica's id and its deployment's replicas by state, from the Serve controller;
        ``status`` is "degraded" while any replica is not RUNNING (one died and is being replaced,
        or autoscaling is adding one) or the deployment is not HEALTHY."""
        async with self._status_lock:
            now = time.monotonic()
            if self._status is None or now - self._status[0] > STATUS_CACHE_S:
                self._status = (now, await asyncio.to_thread(self._deployment_status))
            deployment = self._status[1]
        healthy = deployment.get("status") == "HEALTHY" and set(deployment.get("replicas", {})) == {"RUNNING"}
        return {"status": "ok" if healthy else "degraded", "replica": self.replica, "deployment": deployment}

    def _deployment_status(self) -> dict:
        try:
            overview = serve.status().applications[self.app_name].deployments[self.deployment]
        except Exception as err:  # the controller is restarting: say so, the replica still serves
            return {"name": self.deployment, "status": "UNKNOWN", "message": f"{type(err).__name__}: {err}"}
        return {"name": self.deployment, "status": str(getattr(overview.status, "value", overview.status)),
                "replicas": {str(getattr(k, "value", k)): int(v) for k, v in overview.replica_states.items()},
                "message": overview.message}


def build_application(config: ServeConfig, ray_config: RayConfig | None = None) -> serve.Application:
    """The Serve application (``serve.run(app, name=APP_NAME, route_prefix="/")``). With an index,
    each replica memory-maps it from the shared path (one copy in each node's page cache)."""
    ray_config = ray_config or RayConfig()
    config.require_models()
    layout = replica_layout(config, ray_config)
    # each replica runs the layout's threads and workers, whatever machine it lands on
    config = dataclasses.replace(config, workers=layout.workers,
                                 threads=layout.threads if config.device == "cpu" else config.threads)
    deployment = serve.deployment(CrossrankReplica, name=DEPLOYMENT_NAME, **deployment_options(config, ray_config))
    return deployment.bind(config, manifest_digests(config))


SERVE_FIELDS = {f.name for f in dataclasses.fields(ServeConfig)} - {"host", "port"}
RAY_FIELDS = {f.name for f in dataclasses.fields(RayConfig)} - {"address"}


def app_builder(args: dict) -> serve.Application:
    """Serve's application builder (``import_path: crossrank.front.ray.serve:app_builder``): ``args``
    holds ``crossrank serve`` settings (reranker, embedder, cascade, index, max_queue_tokens,
    max_documents, max_request_bytes, shared, workers, device, threads, core_sharing; several
    models as lists of NAME=FOLDER or mappings of name -> folder) and the replica layout (replicas,
    max_replicas, max_ongoing_requests, health_check_period_s). Host and port are Serve's
    ``http_options``."""
    args = dict(args or {})
    unknown = sorted(set(args) - SERVE_FIELDS - RAY_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"unknown crossrank application args {unknown}: expected some of "
                                   f"{sorted(SERVE_FIELDS | RAY_FIELDS)}")
    config = ServeConfig(**{k: v for k, v in args.items() if k in SERVE_FIELDS})
    ray_config = RayConfig(**{k: v for k, v in args.items() if k in RAY_FIELDS})
    return build_application(config, ray_config)


def run_on_ray(config: ServeConfig, ray_config: RayConfig) -> int:
    """``crossrank serve --ray``: deploy on the cluster at ``ray_config.address`` (or a local one
    started here), HTTP on ``config.host:config.port``, until interrupted; then delete the
    application (and stop the local cluster if this command started it)."""
    app = build_application(config, ray_config)
    started_here = not ray.is_initialized()
    if started_here:
        if ray_config.address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=ray_config.address, log_to_driver=False)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        options = deployment_options(config, ray_config)
        autoscaling = options.get("autoscaling_config")
        scaling = f", autoscaling up to {autoscaling['max_replicas']}" if autoscaling else ""
        print(f"crossrank serve --ray: http://{config.host}:{config.port} ({replica_layout(config, ray_config).text()}"
              f"{scaling}, {options['ray_actor_options']}, max_ongoing_requests {options['max_ongoing_requests']}); "
              f"Ctrl-C stops", file=sys.stderr, flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        serve.delete(APP_NAME)
    finally:
        if started_here:
            serve.shutdown()
            ray.shutdown()
    return 0


__all__ = ["APP_NAME", "DEPLOYMENT_NAME", "CrossrankReplica", "app_builder", "build_application", "manifest_digests",
           "run_on_ray"]
