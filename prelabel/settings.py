"""Settings, one class per concern, read from ``PRELABEL_*`` environment variables.

Nothing here is instantiated at import time: entry points call the cached
``get_*_settings()`` functions, tests build the classes directly.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_COMMON = SettingsConfigDict(env_prefix="PRELABEL_", env_nested_delimiter="__", extra="ignore")

_PLACEHOLDERS = frozenset(
    {"", "change-me", "changeme", "change_me", "secret", "password", "placeholder", "xxx", "todo"}
)


class StorageSettings(BaseSettings):
    """Where the database and the blobs live.

    ``home`` holds the embedded defaults: ``prelabel.db`` (SQLite) and ``blobs/``.
    ``database_url`` switches to another engine (``postgresql+psycopg://...``).
    """

    model_config = _COMMON

    home: Path = Path(".prelabel")
    database_url: str | None = None
    blob_dir: Path | None = None
    db_pool_size: int = Field(default=5, ge=1)
    """Connections each process keeps open to a server database (not SQLite)."""
    db_max_overflow: int = Field(default=10, ge=0)
    """Connections opened beyond ``db_pool_size`` under load, closed when returned."""
    db_pool_timeout_s: float = Field(default=30.0, gt=0)
    """How long a request waits for a free connection before failing."""
    db_pool_recycle_s: float = Field(default=1800.0, gt=0)
    """Connections older than this are replaced (servers and proxies drop idle ones)."""
    blob_url: str | None = None
    """``s3://bucket/prefix`` for an S3-compatible store; unset: the folder ``blob_dir``."""
    s3_endpoint_url: str | None = None
    """MinIO, Ceph, moto...; unset: AWS (or ``AWS_ENDPOINT_URL``)."""
    s3_region: str | None = None
    """Unset: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the AWS config file."""
    s3_access_key_id: str | None = None
    """Unset: boto3's usual chain (``AWS_ACCESS_KEY_ID``, profiles, instance roles)."""
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``path`` for most self-hosted servers (MinIO, moto) addressed by IP or one host name."""
    s3_multipart_threshold_mb: int = Field(default=64, ge=5)
    """Uploads from this size on go in parts (S3's smallest part is 5 MiB)."""
    s3_multipart_chunk_mb: int = Field(default=16, ge=5)
    s3_timeout_s: float = Field(default=30.0, gt=0)
    """Connect and read timeout of each S3 call (boto3 retries on top)."""

    @field_validator("blob_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("s3://"):
            raise ValueError(f"PRELABEL_BLOB_URL must be s3://bucket[/prefix], got {value!r}")
        if value is not None and not value[len("s3://") :].split("/", 1)[0]:
            raise ValueError(f"PRELABEL_BLOB_URL names no bucket: {value!r}")
        return value

    @field_validator("s3_secret_access_key")
    @classmethod
    def _reject_placeholder_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().casefold() in _PLACEHOLDERS:
            raise ValueError("PRELABEL_S3_SECRET_ACCESS_KEY is a placeholder; set the real key")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL in use: the configured one or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'prelabel.db').resolve()}"

    @property
    def resolved_blob_dir(self) -> Path:
        """The folder of the local blob store."""
        return (self.blob_dir or self.home / "blobs").resolve()


class ServiceSettings(BaseSettings):
    """The HTTP service: where it listens and what input it accepts."""

    model_config = _COMMON

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    processes: int = Field(default=1, ge=1, le=64)
    """Service processes on this machine (uvicorn workers on one port): one process runs
    Python on one core at a time, so more answer more requests per second on more cores."""
    keep_alive_s: int = Field(default=75, gt=0)
    """How long an idle client connection stays open. Longer than clients' and load
    balancers' own idle timeouts (httpx 5 s, nginx 75 s, AWS ALB 60 s), so that the
    server never closes a connection a client is about to reuse (a reset request)."""
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_json_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    """Largest JSON request body (a correction's RLE, an integration's event)."""
    predictor_threads: int = Field(default=0, ge=0)
    """onnxruntime intra-op threads per session; 0 lets onnxruntime choose (one per core)."""
    predictor_inter_op_threads: int = Field(default=0, ge=0)
    """Threads across graph branches (``parallel`` execution only); 0: onnxruntime chooses."""
    predictor_graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    """Graph rewrites; ``all`` (with the CPU layout transforms) measured 2x faster (README)."""
    predictor_execution_mode: Literal["sequential", "parallel"] = "sequential"
    predictor_memory_pattern: bool = True
    predictor_cpu_arena: bool = True
    predictor_spinning: bool = True
    """Intra-op threads busy-wait between nodes; off yields cores to co-located processes."""
    predictor_device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: onnxruntime's CUDA provider when onnxruntime-gpu is installed and a GPU is
    visible, else the CPU; ``cpu`` forces the CPU; ``cuda`` fails without it."""
    metrics_sections_max_age_s: float = Field(default=5.0, ge=0.0, le=300.0)
    """How long a service process keeps a project's metrics sections about the whole project
    (queue, training runs, version changes, review) before computing them again; 0: never."""
    computed_reads_at_once: int = Field(default=1, ge=0, le=1000)
    """Queue pages, metrics reports and dashboards computed at once per process; more wait
    their turn, so that draft fetches and corrections go first in a burst (0: no limit).
    One per process: with one process per core, computed reads never hold every core."""
    batch_window_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    """Dynamic batching of concurrent on-demand drafts of one size: how long the first
    request waits for others (0: off, the measured default on CPU; README)."""
    batch_max_images: int = Field(default=8, ge=1, le=64)
    """Most drafts in one batched onnxruntime run."""
    tile_px: int = Field(default=1024, ge=64)
    """Images with a side over this are drafted tile by tile, in tiles no larger (bounded
    memory)."""
    tile_overlap_px: int = Field(default=128, ge=0)
    """Least overlap of neighbouring tiles, blended so that no seam shows."""
    audit_flush_s: float = Field(default=1.0, gt=0)
    """How often the audit entries of reads (drafts, images, corrections served) and token
    uses are written, in one batch; a process killed outright loses at most this much."""
    loop_lag_interval_s: float = Field(default=0.1, ge=0.0, le=60.0)
    """How often each service process samples its event loop's lag
    (``prelabel_event_loop_lag_seconds``); 0: not at all."""
    draft_lease_s: float = Field(default=60.0, gt=0)
    """How long a claim on a draft being computed holds if its holder (a request, a bulk
    job) dies; others wait for that draft instead of computing it again."""
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )
    """prometheus-client's folder for multi-process metrics (its own variable, unprefixed):
    set it when several service processes answer ``GET /metrics``."""


class WorkerSettings(BaseSettings):
    """The training worker that runs queued jobs."""

    model_config = _COMMON

    poll_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    stale_after_s: float = Field(default=300.0, gt=0)
    """A running job whose worker is silent this long (on another host) is failed and retried."""
    training_config: Path = Path("configs/train.yaml")
    nice: int = Field(default=19, ge=0, le=19)
    """CPU priority of the worker process (``PRELABEL_NICE``, 0-19): the service, at the
    default 0, wins the cores whenever both want them (at 19, the lowest priority, the
    scheduler gives the worker about 1.5% of a core the service also wants)."""
    torch_threads: int = Field(default=0, ge=0)
    """Training threads; 0: every usable core but one (at least 1), the one left to the service.
    With ``train_nproc`` above 1 they are shared among the processes."""
    draft_threads: int = Field(default=0, ge=0)
    """onnxruntime threads of the worker's bulk drafts; 0: every usable core (a bulk job
    yields to people's requests between images and runs niced)."""
    train_nproc: int = Field(default=1, ge=1)
    """Processes per training run: above 1, torchrun with DistributedDataParallel (one per
    GPU on a GPU machine)."""
    train_device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cpu`` forces the CPU."""
    train_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto``: float32 on the CPU, mixed precision on CUDA (bf16 where supported, else fp16)."""
    bulk_yield_max_s: float = Field(default=10.0, ge=0)
    """The longest a bulk drafts job waits, before each image, while people's requests are
    computing drafts (then it drafts one image anyway)."""


def settings_environment(settings: BaseSettings) -> dict[str, str | None]:
    """The ``PRELABEL_*`` variables that give a child process the same (flat) ``settings``.

    None marks a field that is unset (the child must not inherit a different value).
    """
    prefix = str(settings.model_config.get("env_prefix", ""))
    environment: dict[str, str | None] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        environment[f"{prefix}{name}".upper()] = None if value is None else str(value)
    return environment


@lru_cache
def get_storage_settings() -> StorageSettings:
    """The process's storage settings, read once from the environment."""
    return StorageSettings()


@lru_cache
def get_service_settings() -> ServiceSettings:
    """The process's service settings, read once from the environment."""
    return ServiceSettings()


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """The process's worker settings, read once from the environment."""
    return WorkerSettings()


class AuthMode(StrEnum):
    """Whether callers must authenticate."""

    ON = "on"
    OFF = "off"
    """Single-user local use: every caller acts as an admin named ``local``."""


class SecuritySettings(BaseSettings):
    """Authentication and encryption at rest.

    ``auth`` (``PRELABEL_AUTH``) is on unless explicitly ``off``. ``secret_key``
    (``PRELABEL_SECRET_KEY``, a Fernet key) encrypts the credentials prelabel stores
    (Label Studio access tokens); unset, one is generated into
    ``$PRELABEL_HOME/secret-key`` (mode 0600) on first start. Replicas that share a
    database must share the key: set it explicitly there.
    """

    model_config = _COMMON

    auth: AuthMode = AuthMode.ON
    secret_key: SecretStr | None = None
    metrics_public: bool = False
    """``PRELABEL_METRICS_PUBLIC``: serve ``GET /metrics`` (Prometheus) without a token."""
    session_ttl_s: int = Field(default=8 * 3600, gt=0)
    """How long a dashboard login (the session cookie) lasts."""

    @field_validator("secret_key")
    @classmethod
    def _reject_placeholder_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().casefold() in _PLACEHOLDERS:
            raise ValueError("PRELABEL_SECRET_KEY is a placeholder; set a Fernet key or unset it")
        return value


@lru_cache
def get_security_settings() -> SecuritySettings:
    """The process's security settings, read once from the environment."""
    return SecuritySettings()


class IntegrationSettings(BaseSettings):
    """Annotation-tool integrations (Label Studio ML backend).

    The backend authenticates like every route: Label Studio's basic-auth password
    is a prelabel API token (any user name). ``labelstudio_url`` overrides the
    ``hostname`` Label Studio announces in ``/setup`` (needed when prelabel
    reaches Label Studio under another address, e.g. between containers).
    """

    model_config = _COMMON

    labelstudio_auto_create: bool = True
    """Create a prelabel project on the first ``/setup`` of an unknown Label Studio project."""
    labelstudio_password: SecretStr | None = None
    """Removed: a start with it set fails, naming what replaces it."""
    labelstudio_url: str | None = None
    labelstudio_fetch_timeout_s: float = Field(default=10.0, gt=0)
    labelstudio_predict_budget_s: float = Field(default=80.0, gt=0)
    """``/predict`` answers within this time (Label Studio gives up after 100 s)."""
    labelstudio_predict_workers: int = Field(default=4, ge=1, le=64)

    @field_validator("labelstudio_password")
    @classmethod
    def _reject_shared_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            raise ValueError(
                "PRELABEL_LABELSTUDIO_PASSWORD was removed: the shared password gave every "
                "Label Studio connection the same rights. Unset it; create a user for the "
                "connection (prelabel users add NAME, prelabel members add ...) and use its "
                "token as Label Studio's basic-auth password"
            )
        return value


@lru_cache
def get_integration_settings() -> IntegrationSettings:
    """The process's integration settings, read once from the environment."""
    return IntegrationSettings()
