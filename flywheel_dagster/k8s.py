"""Preview the Kubernetes Jobs that dagster-k8s's `k8s_job_executor` would create for a job's steps.

It runs dagster-k8s's own code path for a step pod (the step's `dagster-k8s/config` tags merged into a
container context, `construct_dagster_k8s_job`), without a cluster, so the GPU requests, node selectors
and tolerations can be checked before deploying:

    .venv/bin/python -m flywheel_dagster.k8s [flywheel_cycle] > steps.yaml
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg


def render_step_jobs(
    defs: dg.Definitions,
    job_name: str = "flywheel_cycle",
    image: str = "flywheel:latest",
    namespace: str = "flywheel",
) -> dict[str, dict]:
    """asset name -> the step's V1Job as a plain dict (what the Kubernetes API would receive)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
    from kubernetes.client import ApiClient

    # What the Helm chart's K8sRunLauncher holds and the executor reads from it.
    launcher = SimpleNamespace(
        job_image=image,
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
    )
    job = defs.resolve_job_def(job_name)
    out = {}
    for key in sorted(job.asset_layer.executable_asset_keys, key=lambda k: k.to_user_string()):
        assets_def = defs.resolve_assets_def(key)
        step = assets_def.op.name
        context = K8sContainerContext(namespace=namespace).merge(
            K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(assets_def.op.tags))
        )
        v1job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(image, launcher),
            args=["dagster", "api", "execute_step"],
            job_name=f"dagster-step-{step.replace('_', '-')}",
            pod_name=f"dagster-step-{step.replace('_', '-')}",
            component="step_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": job_name, "dagster/op": step},
        )
        out[key.to_user_string()] = ApiClient().sanitize_for_serialization(v1job)
    return out


def gpu_limit(rendered: dict) -> int:
    """The nvidia.com/gpu limit of a rendered step job's container (0 if none)."""
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    return int(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))


if __name__ == "__main__":
    from pathlib import Path

    import yaml

    from flywheel_dagster.code_location import find_workspace, load_definitions

    defs = load_definitions(find_workspace(Path.cwd()))
    print(yaml.safe_dump_all(render_step_jobs(defs, *(sys.argv[1:2] or ["flywheel_cycle"])).values()))
