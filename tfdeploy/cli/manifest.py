"""``tfdeploy manifest``: Kubernetes, KServe and compose files for scaling out."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeploy.cli.app import emit, main
from tfdeploy.errors import UserError
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME


@main.command(short_help="Kubernetes, KServe or compose files for scaling out.")
@click.option("--target", "-t", type=click.Choice(["k8s", "kserve", "compose"]), default=None,
              help="What to write for: k8s, kserve or compose (required).")
@click.argument("source", required=False, default="models/deeplab")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replicas (the autoscaler's minimum when --max-replicas is above it).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="k8s/kserve: autoscaler maximum [3 x replicas]; = --replicas: no HPA.")
@click.option("--gpu", is_flag=True, help="-gpu image, nvidia.com/gpu limit, GPU toleration.")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs per replica (implies --gpu) [1].")
@click.option("--image", default=None,
              help="Serving image, kept as given (a @sha256: digest stays pinned) "
                   "[tensorflow/serving:<version>].")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True)
@click.option("--pvc", default=None, metavar="CLAIM",
              help="k8s/kserve, local SOURCE: existing claim holding <model>/<version>/.")
@click.option("--fill-from", default=None, metavar="URI",
              help="k8s, local SOURCE: gs:// or s3:// copy of it; an initContainer copies "
                   "it into each pod's own ReadWriteOnce claim.")
@click.option("--pvc-size", default=None, help="k8s --fill-from: claim size [2Gi].")
@click.option("--storage-class", default=None, help="k8s --fill-from: claim storage class.")
@click.option("--fill-image", default=None,
              help="k8s --fill-from: copy image [google/cloud-sdk or amazon/aws-cli].")
@click.option("--service-account", default=None, metavar="NAME",
              help="k8s/kserve: pod service account (workload identity, KServe secrets).")
@click.option("--secret-env", default=None, metavar="SECRET",
              help="k8s: secret whose keys become env vars (AWS_ACCESS_KEY_ID, ...).")
@click.option("--secret-file", default=None, metavar="SECRET[/KEY]",
              help="k8s: secret mounted as a key file (GOOGLE_APPLICATION_CREDENTIALS) "
                   "[KEY: key.json].")
@click.option("--namespace", default=None)
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE",
              help="Pod node selector (repeatable), e.g. for GPU node pools.")
@click.option("--cpu", default=None, help="k8s/kserve: CPU request per replica [1].")
@click.option("--cpu-limit", default=None, help="k8s/kserve: CPU limit [none].")
@click.option("--memory", default=None,
              help="k8s/kserve: memory request = limit; compose: memory limit [2Gi].")
@click.option("--startup-timeout", type=int, default=None, metavar="SECONDS",
              help="k8s/compose: time a replica gets to load the model before failed "
                   "health checks count [300, 900 with --gpu].")
@click.option("--scale-metric", default=None,
              type=click.Choice(["cpu", "memory", "concurrency", "rps"]),
              help="k8s: cpu|memory [cpu]; kserve: also concurrency|rps [concurrency].")
@click.option("--scale-target", type=int, default=None,
              help="Autoscaling target (utilization % for cpu/memory) [70; 8 concurrent].")
@click.option("--service-monitor", is_flag=True,
              help="k8s: add a Prometheus Operator ServiceMonitor.")
@click.option("--transport", type=click.Choice(["grpc", "rest"]), default=None,
              help="kserve: the port the InferenceService exposes [grpc].")
@click.option("--protocol", type=click.Choice(["v1", "v2"]), default=None,
              help="v2 serves the Open Inference Protocol (and TF Serving's API) with "
                   "tfdeploy-model-server from --image (our embedded image; the official "
                   "one has no v2); probes use /v2/health [v1].")
@click.option("--batcher-max-batch-size", type=int, default=None,
              help="kserve (--transport rest): KServe batcher batch size.")
@click.option("--batcher-max-latency", type=int, default=None, metavar="MS",
              help="kserve (--transport rest): KServe batcher latency bound.")
@click.option("--model-config-file", type=click.Path(exists=True, path_type=Path), default=None,
              help="k8s: TF Serving model config (base paths as the pod sees them).")
@click.option("--batching-parameters-file", type=click.Path(exists=True, path_type=Path),
              default=None, help="k8s/compose: TF Serving batching parameters.")
@click.option("--grpc-port", type=int, default=None,
              help="compose: first replica's gRPC port (next ones +2 each) [8500].")
@click.option("--rest-port", type=int, default=None, help="compose: first REST port [8501].")
@click.option("--host", default=None, help="compose: bind address [127.0.0.1].")
@click.option("--canary-percent", type=click.IntRange(1, 99), default=None, metavar="N",
              help="k8s: a canary Deployment behind the same Service with about N% of the "
                   "pods; kserve: canaryTrafficPercent N.")
@click.option("--canary-version", type=click.IntRange(min=1), default=None,
              help="k8s: the version the canary serves [the newest of a local SOURCE].")
@click.option("--stable-version", type=click.IntRange(min=1), default=None,
              help="k8s: the version the stable Deployment serves [with a canary: the next "
                   "older one of a local SOURCE; else the newest, unpinned].")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("deploy"),
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def manifest(target, output_dir, as_json, node_selector, **opts) -> None:
    """Write ready-to-apply manifests for SOURCE (a base path or gs:// / s3:// URI).

    \b
      k8s      Deployment (startup/readiness/liveness probes, spread over nodes and
               zones, Prometheus annotations) + Service + PodDisruptionBudget
               + HorizontalPodAutoscaler + ConfigMap (+ ServiceMonitor)
      kserve   InferenceService with a TensorFlow predictor
      compose  N replicas with healthchecks, ports on 127.0.0.1

    An option the target cannot carry out is an error, never dropped.  Credentials for
    gs:// and s3://: --service-account (workload identity), --secret-env or
    --secret-file.  A local SOURCE needs --pvc or --fill-from on a cluster.

    \b
    Examples:
      tfdeploy manifest -t k8s gs://my-bucket/models/deeplab --gpu --replicas 2 \\
          --service-account deeplab-reader --service-monitor
      tfdeploy manifest -t k8s s3://bucket/deeplab --secret-env aws-credentials
      tfdeploy manifest -t k8s models/deeplab --fill-from gs://my-bucket/deeplab
      tfdeploy manifest -t kserve s3://bucket/deeplab --service-account kserve-s3
      tfdeploy manifest -t kserve s3://bucket/deeplab --protocol v2 --transport rest \\
          --image registry.example.com/tfdeploy/serving-embedded:1
      tfdeploy manifest -t compose models/deeplab --replicas 2
      tfdeploy manifest -t k8s models/deeplab --pvc models --replicas 9 --canary-percent 10
    """
    from tfdeploy.api import manifest as write_manifests
    from tfdeploy.deploy.manifests import summary
    from tfdeploy.deploy.options import parse_node_selector

    if target is None:  # `tfdeploy manifest k8s` reads k8s as SOURCE: say what to type
        given = opts.get("source")
        example = (f"`tfdeploy manifest -t {given}" + " SOURCE`" if given in (
            "k8s", "kserve", "compose") else "`tfdeploy manifest -t k8s SOURCE`")
        raise UserError(f"which target? give --target (-t) k8s, kserve or compose, e.g. "
                        f"{example}")

    payload = write_manifests(target, output_dir=output_dir,
                              node_selector=parse_node_selector(node_selector), **opts)
    emit(as_json, payload, summary(payload))
