"""What ``crossrank serve`` runs with, and its defaults (no web framework, no Ray imported here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from crossrank.errors import InvalidArgumentError, check_int, check_number
from crossrank.settings import DEFAULT_MAX_QUEUE_TOKENS

DEFAULT_MAX_DOCUMENTS = 1000            # documents (or texts) per request; more: 413
DEFAULT_MAX_REQUEST_BYTES = 8 << 20     # request body; more: 413
# Ray Serve caps a replica's requests in flight by count, the scheduler its queue by real tokens:
# a 1 x 100 rerank request of TREC RAG passages is about 25,000 real tokens (mean 251 per pair at
# max_length 512), so the default queue bound (2^20 tokens) is about 41 such requests per replica.
REQUEST_TOKENS_GUESS = 25_000
RAY_HEALTH_CHECK_PERIOD_S = 10.0        # Serve's default; how often the controller calls check_health


@dataclass
class ServeConfig:
    """Each field is a flag of ``crossrank serve`` and a CROSSRANK_* environment variable."""

    reranker: str | None = None
    embedder: str | None = None
    index: str | None = None
    store: str | None = None            # postgresql://..., milvus://... or an index folder (crossrank.stores)
    table: str | None = None            # the store's table or collection (default crossrank_documents)
    hybrid: bool = False                # dense + lexical candidates fused (RRF)
    host: str = "127.0.0.1"
    port: int = 8080
    max_queue_tokens: int = DEFAULT_MAX_QUEUE_TOKENS
    max_documents: int = DEFAULT_MAX_DOCUMENTS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shared: bool = True
    workers: int = 1                    # scheduler threads per model (with --threads 1: one per core)
    device: str = "cpu"
    threads: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RayConfig:
    """How ``crossrank serve --ray`` (``crossrank.front.ray.serve``) lays the app out on a Ray cluster.

    replicas: replicas to run (with ``max_replicas``: the autoscaling floor). max_replicas: when
    larger than ``replicas``, Serve autoscales between the two on requests in flight.
    max_ongoing_requests: requests one replica takes at a time (default: the scheduler's
    ``max_queue_tokens`` // ``REQUEST_TOKENS_GUESS``, at least 1); more wait in Serve's router.
    address: the cluster to join ("auto": the one ``ray start`` runs on this machine; None: start a
    local one). health_check_period_s: how often Serve asks each replica whether its models are
    loaded (a replica whose models failed is replaced).
    """

    replicas: int = 1
    max_replicas: int | None = None
    max_ongoing_requests: int | None = None
    address: str | None = None
    health_check_period_s: float = RAY_HEALTH_CHECK_PERIOD_S

    def __post_init__(self):
        check_int(self.replicas, "replicas", 1)
        check_int(self.max_replicas, "max_replicas", 1, allow_none=True)
        check_int(self.max_ongoing_requests, "max_ongoing_requests", 1, allow_none=True)
        check_number(self.health_check_period_s, "health_check_period_s", low=0.1)
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise InvalidArgumentError(f"max_replicas must be at least replicas ({self.replicas}), got "
                                       f"{self.max_replicas}")

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None and self.max_replicas > self.replicas


def deployment_options(config: ServeConfig, ray: RayConfig) -> dict:
    """The Ray Serve deployment options (``serve.deployment(**options)``) for one crossrank replica:
    CPU replicas reserve ``threads`` CPUs (intra-op threads = reserved CPUs, default 1), CUDA
    replicas one GPU; requests in flight bounded from the scheduler's token bound."""
    threads = config.threads or 1
    actor = {"num_cpus": threads} if config.device == "cpu" else {"num_cpus": 1, "num_gpus": 1}
    ongoing = ray.max_ongoing_requests or max(1, config.max_queue_tokens // REQUEST_TOKENS_GUESS)
    options = {"ray_actor_options": actor, "max_ongoing_requests": ongoing,
               "health_check_period_s": ray.health_check_period_s}
    if ray.autoscaling:
        options["autoscaling_config"] = {"min_replicas": ray.replicas, "initial_replicas": ray.replicas,
                                         "max_replicas": ray.max_replicas,
                                         "target_ongoing_requests": max(1, ongoing // 2)}
    else:
        options["num_replicas"] = ray.replicas
    return options


__all__ = ["DEFAULT_MAX_DOCUMENTS", "DEFAULT_MAX_QUEUE_TOKENS", "DEFAULT_MAX_REQUEST_BYTES", "REQUEST_TOKENS_GUESS",
           "RayConfig", "ServeConfig", "deployment_options"]
