"""``tfdeploy manifest``: Kubernetes, KServe and compose files for scaling out."""

from __future__ import annotations

from pathlib import Path

import click

from tfdeploy.cli.app import emit, main
from tfdeploy.tfs.names import DEFAULT_MODEL_NAME, GRPC_PORT, REST_PORT


@main.command(short_help="Kubernetes, KServe or compose files for scaling out.")
@click.option("--target", "-t", type=click.Choice(["k8s", "kserve", "compose"]), required=True)
@click.argument("source", required=False, default="models/deeplab")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="HPA / KServe upper bound [3 x replicas].")
@click.option("--gpu", is_flag=True, help="-gpu image, nvidia.com/gpu limit, GPU toleration.")
@click.option("--image", default=None, help="Serving image [tensorflow/serving:<version>].")
@click.option("--model-name", default=DEFAULT_MODEL_NAME, show_default=True)
@click.option("--pvc", default=None, help="Claim holding a local base path [<name>-models].")
@click.option("--pvc-size", default="2Gi", show_default=True)
@click.option("--storage-class", default=None)
@click.option("--namespace", default=None)
@click.option("--node-selector", multiple=True, metavar="KEY=VALUE",
              help="Pod node selector (repeatable), e.g. for GPU node pools.")
@click.option("--cpu", default="1", show_default=True, help="CPU request per replica.")
@click.option("--memory", default="2Gi", show_default=True, help="Memory per replica.")
@click.option("--model-config-file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--batching-parameters-file", type=click.Path(exists=True, path_type=Path),
              default=None)
@click.option("--grpc-port", type=int, default=GRPC_PORT, show_default=True,
              help="compose: first replica's gRPC port (next ones +2 each).")
@click.option("--rest-port", type=int, default=REST_PORT, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="compose: bind address.")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("deploy"),
              show_default=True)
@click.option("--json", "as_json", is_flag=True)
def manifest(target, source, replicas, max_replicas, gpu, image, model_name, pvc, pvc_size,
             storage_class, namespace, node_selector, cpu, memory, model_config_file,
             batching_parameters_file, grpc_port, rest_port, host, output_dir,
             as_json) -> None:
    """Write ready-to-apply manifests for SOURCE (a base path or gs:// / s3:// URI).

    \b
      k8s      Deployment + Service + HorizontalPodAutoscaler (+ PVC, ConfigMap)
      kserve   InferenceService with a TensorFlow predictor
      compose  N replicas of the serving image, ports on 127.0.0.1

    \b
    Examples:
      tfdeploy manifest -t k8s gs://my-bucket/models/deeplab --replicas 3 --gpu
      kubectl apply -f deploy/deeplab-serving.k8s.yaml
      tfdeploy manifest -t compose models/deeplab --replicas 2
      docker compose -f deploy/compose.yaml up -d
    """
    from tfdeploy.deploy.manifests import (
        ManifestSpec,
        check_source,
        endpoints,
        next_steps,
        parse_node_selectors,
        write,
    )

    selectors = parse_node_selectors(node_selector)
    spec = ManifestSpec(source=source, model_name=model_name, replicas=replicas,
                        max_replicas=max_replicas, gpu=gpu, image=image, pvc=pvc,
                        pvc_size=pvc_size, storage_class=storage_class, cpu=cpu,
                        memory=memory, namespace=namespace, node_selector=selectors,
                        model_config_file=model_config_file,
                        batching_parameters_file=batching_parameters_file,
                        grpc_port=grpc_port, rest_port=rest_port, host=host)
    check_source(target, spec)
    files = write(target, spec, output_dir)
    payload = {"target": target, "files": [str(f) for f in files], "image": spec.image}
    if target == "compose":
        payload["grpc_endpoints"] = endpoints(spec, "grpc")
        payload["rest_endpoints"] = endpoints(spec, "rest")
    lines = [f"wrote {f}" for f in files] + [next_steps(target, spec, files)]
    emit(as_json, payload, "\n".join(line for line in lines if line))
