"""How ``crossrank serve --ray`` lays the app out on a Ray cluster: ``RayConfig``, the Serve
deployment options it makes, and the ``--ray*`` flags of ``crossrank serve``. No Ray imported here,
so ``crossrank serve --help`` and the deployment options work without the extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from crossrank.errors import InvalidArgumentError, UsageError, check_int, check_number
from crossrank.front.args import env_default, flag_bool, positive_int_arg

if TYPE_CHECKING:  # crossrank.front.serve imports this module for its flags
    from crossrank.front.serve.config import ServeConfig

# Ray Serve caps a replica's requests in flight by count, the scheduler its queue by real tokens:
# a 1 x 100 rerank request of TREC RAG passages is about 25,000 real tokens (mean 251 per pair at
# max_length 512), so the default queue bound (2^20 tokens) is about 41 such requests per replica.
REQUEST_TOKENS_GUESS = 25_000
RAY_HEALTH_CHECK_PERIOD_S = 10.0        # Serve's default; how often the controller calls check_health
ADDRESS_HELP = "Ray cluster to join ('auto': the one `ray start` runs on this machine; default: start a local one)"


@dataclass
class RayConfig:
    """How ``crossrank serve --ray`` (``crossrank.front.ray.serve``) lays the app out on a Ray cluster.

    replicas: replicas to run (with ``max_replicas``: the autoscaling floor; None: the layout's
    workers, see ``replica_layout``). max_replicas: when larger than the replicas, Serve
    autoscales between the two on requests in flight.
    max_ongoing_requests: requests one replica takes at a time (default: the scheduler's
    ``max_queue_tokens`` // ``REQUEST_TOKENS_GUESS``, at least 1); more wait in Serve's router.
    address: the cluster to join ("auto": the one ``ray start`` runs on this machine; None: start a
    local one). health_check_period_s: how often Serve asks each replica whether its models are
    loaded (a replica whose models failed is replaced).
    """

    replicas: int | None = None
    max_replicas: int | None = None
    max_ongoing_requests: int | None = None
    address: str | None = None
    health_check_period_s: float = RAY_HEALTH_CHECK_PERIOD_S

    def __post_init__(self):
        check_int(self.replicas, "replicas", 1, allow_none=True)
        check_int(self.max_replicas, "max_replicas", 1, allow_none=True)
        check_int(self.max_ongoing_requests, "max_ongoing_requests", 1, allow_none=True)
        check_number(self.health_check_period_s, "health_check_period_s", low=0.1)
        if self.max_replicas is not None and self.replicas is not None and self.max_replicas < self.replicas:
            raise InvalidArgumentError(f"max_replicas must be at least replicas ({self.replicas}), got "
                                       f"{self.max_replicas}")


@dataclass(frozen=True)
class ReplicaLayout:
    """Replicas x intra-op threads per replica (= the CPUs each reserves) x scheduler workers per
    replica, and where the replicas and threads came from ("argument", "runtime.json", "rule")."""

    replicas: int
    threads: int
    workers: int
    origin: dict

    def text(self) -> str:
        return (f"{self.replicas} replica{'s' * (self.replicas > 1)} ({self.origin['replicas']}) x {self.threads} "
                f"thread{'s' * (self.threads > 1)} ({self.origin['threads']}) x {self.workers} "
                f"worker{'s' * (self.workers > 1)}")


def replica_layout(config: ServeConfig, ray: RayConfig, cores: int | None = None) -> ReplicaLayout:
    """How ``crossrank serve --ray`` lays the replicas out on a node: the served layout of the
    default model (the first reranker, else the first embedder: its runtime.json "serve" layout,
    else ``crossrank.settings.layout_rule`` of this machine, ``cores`` physical cores) with its
    workers as replicas, one process each: replicas = ``--replicas``, else the layout's workers;
    threads per replica = ``--threads``, else the layout's; scheduler workers per replica =
    ``--workers``, else 1. Capped by ``--max-replicas``. On CUDA: the layout's one worker."""
    from crossrank.front.serve.config import serve_layout  # the serve package imports this module

    folders = list(config.reranker.values()) + list(config.embedder.values())
    base = serve_layout(True, None, None, config.device, folders[0] if folders else None, cores)
    replicas = ray.replicas or min(base.workers, ray.max_replicas or base.workers)
    origin = {"replicas": "argument" if ray.replicas else base.origin,
              "threads": "argument" if config.threads else base.origin}
    return ReplicaLayout(replicas, config.threads or base.threads, config.workers or 1, origin)


def deployment_options(config: ServeConfig, ray: RayConfig, cores: int | None = None) -> dict:
    """The Ray Serve deployment options (``serve.deployment(**options)``) for one crossrank replica,
    laid out by ``replica_layout``: CPU replicas reserve its ``threads`` CPUs (intra-op threads =
    reserved CPUs), CUDA replicas one GPU; requests in flight bounded from the scheduler's token
    bound; fixed replicas, or autoscaling up to ``max_replicas`` when larger."""
    layout = replica_layout(config, ray, cores)
    actor = {"num_cpus": layout.threads} if config.device == "cpu" else {"num_cpus": 1, "num_gpus": 1}
    ongoing = ray.max_ongoing_requests or max(1, config.max_queue_tokens // REQUEST_TOKENS_GUESS)
    options = {"ray_actor_options": actor, "max_ongoing_requests": ongoing,
               "health_check_period_s": ray.health_check_period_s}
    if ray.max_replicas is not None and ray.max_replicas > layout.replicas:
        options["autoscaling_config"] = {"min_replicas": layout.replicas, "initial_replicas": layout.replicas,
                                         "max_replicas": ray.max_replicas,
                                         "target_ongoing_requests": max(1, ongoing // 2)}
    else:
        options["num_replicas"] = layout.replicas
    return options


def add_ray_address(p, default=None) -> None:
    """``--ray-address`` (the one name for the cluster to join, in every command)."""
    p.add_argument("--ray-address", default=default, metavar="ADDR", help=ADDRESS_HELP)


def add_ray_arguments(p) -> None:
    """``crossrank serve``'s Ray flags (each also a CROSSRANK_* environment variable)."""
    ray = p.add_argument_group("on a Ray cluster (--ray; needs the 'ray' extra: pip install 'crossrank[ray]')")
    ray.add_argument("--ray", type=flag_bool, nargs="?", const=True, default=env_default("RAY", "0"), metavar="BOOL",
                     help="run the same app as a Ray Serve deployment: one copy of the models and one scheduler per "
                          "replica, Serve's HTTP proxy on --host:--port; intra-op threads per replica = the CPUs it "
                          "reserves (--threads; default: the layout's, see --replicas); --workers: scheduler workers "
                          "per replica (default 1); the artifacts must be at a path every node sees")
    ray.add_argument("--replicas", type=positive_int_arg, default=env_default("REPLICAS"), metavar="N",
                     help="replicas (with --max-replicas: the autoscaling floor) (default: the served layout's workers, "
                          "one replica each: the default model's runtime.json \"serve\" layout, else one per physical "
                          "core of this machine, 1 thread each; docs/deployment.md)")
    ray.add_argument("--max-replicas", type=positive_int_arg, default=env_default("MAX_REPLICAS"), metavar="N",
                     help="autoscale between --replicas and N on requests in flight (default: a fixed --replicas)")
    ray.add_argument("--max-ongoing-requests", type=positive_int_arg, default=env_default("MAX_ONGOING_REQUESTS"),
                     metavar="N", help="requests one replica takes at a time; more wait in Serve's router (default: "
                                       "--max-queue-tokens // 25000, a 1 x 100 request of TREC RAG passages)")
    add_ray_address(ray, env_default("RAY_ADDRESS"))


def ray_config_from_args(args) -> RayConfig | None:
    """The RayConfig of ``crossrank serve --ray ...``; None without --ray (then the layout flags
    are refused: they would be ignored)."""
    if args.ray:
        return RayConfig(replicas=args.replicas, max_replicas=args.max_replicas,
                         max_ongoing_requests=args.max_ongoing_requests, address=args.ray_address)
    if args.max_replicas is not None or args.ray_address is not None or args.max_ongoing_requests is not None \
            or args.replicas is not None:
        raise UsageError("--replicas, --max-replicas, --max-ongoing-requests and --ray-address lay out replicas on "
                         "Ray: add --ray")
    return None


__all__ = ["REQUEST_TOKENS_GUESS", "RayConfig", "ReplicaLayout", "add_ray_address", "add_ray_arguments",
           "deployment_options", "ray_config_from_args", "replica_layout"]
