"""One pydantic model of flywheel.yaml, its presets, and errors that name the field.

A config file picks a preset and overrides any field of it:

    preset: playground
    traffic:
      problems_per_cycle: 600

Unknown fields are errors (a typo must not silently fall back to a default).

The modules: `stages` and `operations` (the sections), `models` (the whole file, `FlywheelConfig`),
`presets` (`PRESETS`) and `loading` (`load_config`, `build_config`, `merged`); everything is re-exported here.
"""

from flywheel_dagster.config.base import ConfigError
from flywheel_dagster.config.loading import (
    CONFIG_ENV,
    HOME_ENV,
    PRESET_ENV,
    build_config,
    flywheel_home,
    load_config,
    merged,
)
from flywheel_dagster.config.models import FlywheelConfig
from flywheel_dagster.config.operations import (
    ComputeConfig,
    GpuNodesConfig,
    HealthCheckConfig,
    RequestLimitsConfig,
    ScheduleConfig,
    ServingConfig,
    UiConfig,
)
from flywheel_dagster.config.presets import PRESETS, PresetName
from flywheel_dagster.config.stages import (
    CPU_KV_CACHE_BYTES,
    BenchmarkConfig,
    BootstrapConfig,
    DedupConfig,
    EngineConfig,
    FilterConfig,
    GateConfig,
    GrpoConfig,
    HarvestConfig,
    IngestConfig,
    LoraConfig,
    ModelConfig,
    MonitorConfig,
    OnPolicyConfig,
    OpsdConfig,
    RediConfig,
    TaskConfig,
    ThresholdConfig,
    TrafficConfig,
    TrainingConfig,
)

__all__ = [
    "merged",
    "CONFIG_ENV",
    "CPU_KV_CACHE_BYTES",
    "HOME_ENV",
    "PRESETS",
    "PRESET_ENV",
    "BenchmarkConfig",
    "BootstrapConfig",
    "ComputeConfig",
    "ConfigError",
    "DedupConfig",
    "EngineConfig",
    "FilterConfig",
    "FlywheelConfig",
    "GateConfig",
    "GpuNodesConfig",
    "GrpoConfig",
    "HarvestConfig",
    "HealthCheckConfig",
    "IngestConfig",
    "LoraConfig",
    "ModelConfig",
    "MonitorConfig",
    "OnPolicyConfig",
    "OpsdConfig",
    "PresetName",
    "RediConfig",
    "RequestLimitsConfig",
    "ScheduleConfig",
    "ServingConfig",
    "TaskConfig",
    "ThresholdConfig",
    "TrafficConfig",
    "TrainingConfig",
    "UiConfig",
    "build_config",
    "flywheel_home",
    "load_config",
]
