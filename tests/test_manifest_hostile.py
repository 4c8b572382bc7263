"""Hostile values to every option of every ``tfdeploy manifest`` target (issue 24): each
is either refused with a one-line error naming the option, or written so that the files
still parse and the value stays inside its own argument.

"Stays inside" is checked by structure: the same option given a harmless value must give
the same files, the same shell words (``sh -c`` scripts and the printed commands are split
as a shell would) and the same steps once the hostile value is put back as the harmless
one.  A value that broke out of its quotes, added a YAML key or a shell command would
change that structure."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import tfdeploy
from tfdeploy.errors import UserError

HOSTILE = [
    "$(touch /tmp/tfdeploy-pwned)", "`id`", "a; rm -rf ~", "x' || true; echo '",
    'a"b', "a\nkind: Secret", "${HOME}", "$$", "--help", "*", "a b", "{{x}}", "&anchor",
    "!!python/object/apply:os.system ['id']", "a%sb%n", "a\\b", "é", "a#b", "-", "",
    "a:b", "a,b", "a=b",
]
SAFE = "benign"
# options whose harmless value is not a word
SAFE_VALUES = {"cpu": "1", "cpu_limit": "2", "memory": "3Gi", "pvc_size": "5Gi",
               "host": "127.0.0.2"}

# target -> the options that make a valid manifest, and each option's context: how the
# (hostile or safe) text becomes that option's value
BASE: dict[str, dict[str, Any]] = {
    "k8s": {"source": "gs://bucket/deeplab"},
    "k8s-fill": {"source": "{local}", "fill_from": "s3://bucket/deeplab"},
    "k8s-pvc": {"source": "models/deeplab", "pvc": "claim"},
    "kserve": {"source": "gs://bucket/deeplab"},
    "compose": {"source": "{local}"},
}
OPTIONS: dict[str, list[tuple[str, str]]] = {
    "k8s": [("model_name", "{}"), ("image", "{}"), ("image", "reg.io/{}:1"),
            ("source", "gs://bucket/{}"), ("source", "s3://{}/x"),
            ("namespace", "{}"), ("service_account", "{}"), ("secret_env", "{}"),
            ("secret_file", "{}"), ("secret_file", "key/{}"), ("cpu", "{}"),
            ("cpu_limit", "{}"), ("memory", "{}"), ("node_selector", "key={}"),
            ("node_selector", "{}=value")],
    "k8s-fill": [("model_name", "{}"), ("fill_from", "s3://bucket/{}"),
                 ("fill_from", "gs://{}"), ("fill_image", "{}"), ("pvc_size", "{}"),
                 ("storage_class", "{}"), ("source", "{local_named}"),
                 ("output_dir", "{out_named}"), ("secret_env", "{}"),
                 ("model_config_file", "{file_with}")],
    "k8s-pvc": [("pvc", "{}"), ("model_name", "{}")],
    "kserve": [("model_name", "{}"), ("image", "{}"), ("source", "gs://bucket/{}"),
               ("namespace", "{}"), ("service_account", "{}"), ("cpu", "{}"),
               ("memory", "{}"), ("node_selector", "key={}")],
    "compose": [("model_name", "{}"), ("image", "{}"), ("host", "{}"),
                ("source", "{local_named}"), ("output_dir", "{out_named}"),
                ("batching_parameters_file", "{named_file}")],
}
CASES = [(target, option, context) for target, opts in OPTIONS.items()
         for option, context in opts]


def _value(context: str, text: str, tmp: Path, local: Path):
    """The option value for ``text`` in ``context`` (files and folders made as needed)."""
    if context == "{local_named}":  # a base path whose folder name is the text
        path = tmp / "bases" / (text or "empty")
        (path / "1").mkdir(parents=True, exist_ok=True)
        return str(path)
    if context == "{out_named}":
        return tmp / "outs" / (text or "empty")
    if context == "{named_file}":
        path = tmp / "files" / (text or "empty")
        path.mkdir(parents=True, exist_ok=True)
        (path / "batching.config").write_text("max_batch_size { value: 8 }\n")
        return path / "batching.config"
    if context == "{file_with}":  # a model config whose text is hostile
        path = tmp / f"models-{abs(hash(text))}.config"
        path.write_text(f'model_config_list {{ config {{ name: "{text}" }} }}\n# {text}\n')
        return path
    if context == "key={}":
        return {"key": text}
    if context == "{}=value":
        return {text: "value"}
    return context.replace("{}", text).replace("{local}", str(local))


def _generate(target: str, option: str, value, tmp: Path, local: Path, out: Path):
    kwargs: dict[str, Any] = {k: _value(v, "", tmp, local) for k, v in
                              BASE[target].items()}
    kwargs["output_dir"] = out
    kwargs[option] = value
    real = target.split("-")[0]
    source = kwargs.pop("source")
    return tfdeploy.manifest(real, source, **kwargs)


def _canonical(node, compose: bool):
    """Shell scripts as the words a shell sees; compose's ``$$`` as the ``$`` it means."""
    if isinstance(node, dict):
        return {_canonical(k, compose): _canonical(v, compose) for k, v in node.items()}
    if isinstance(node, list):
        out = [_canonical(v, compose) for v in node]
        for i, v in enumerate(node[:-1]):
            if v == "-c" and isinstance(node[i + 1], str):
                out[i + 1] = shlex.split(_canonical(node[i + 1], compose))
        return out
    if isinstance(node, str) and compose:
        return node.replace("$$", "$")
    return node


def _substitute(node, old: str, new: str, exact: bool = False):
    """``old`` -> ``new`` in every string (or only strings equal to it, with ``exact``)."""
    if isinstance(node, dict):
        return {_substitute(k, old, new, exact): _substitute(v, old, new, exact)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, old, new, exact) for v in node]
    if isinstance(node, str):
        if exact:
            return new if node == old else node
        return node.replace(old, new) if old else node
    return node


def _result(payload: dict, compose: bool) -> dict:
    files = [list(yaml.safe_load_all(Path(f).read_text())) for f in payload["files"]]
    steps = []
    for step in payload["next_steps"]:
        prefix, _, command = step.partition(": ")
        steps.append([prefix, shlex.split(command)])
    return {"files": _canonical(files, compose), "steps": steps}


@pytest.mark.parametrize("target,option,context", CASES,
                         ids=[f"{t}-{o}-{c}" for t, o, c in CASES])
def test_hostile_values_are_refused_or_stay_in_their_argument(tmp_path, demo_base, target,
                                                             option, context):
    local = tmp_path / "local"
    (local / "1").mkdir(parents=True)
    safe_value = SAFE_VALUES.get(option) or _value(context, SAFE, tmp_path, local)
    safe = _generate(target, option, safe_value, tmp_path, local, tmp_path / "safe")
    compose = target == "compose"
    expected = _result(safe, compose)
    accepted = 0
    for i, text in enumerate(HOSTILE):
        if context.startswith("{") and context != "{}" and (not text or "/" in text):
            continue  # not a file name
        value = _value(context, text, tmp_path, local)
        out = tmp_path / f"out{i}"
        try:
            payload = _generate(target, option, value, tmp_path, local, out)
        except UserError as exc:
            assert exc.param, f"{option}={text!r}: the error names no option: {exc}"
            assert "\n" not in str(exc), f"{option}={text!r}: not one line: {exc!r}"
            assert not out.exists() or not any(out.iterdir()), "refused, yet wrote files"
            continue
        accepted += 1
        got = _substitute(_result(payload, compose), f"{out}/", f"{tmp_path / 'safe'}/")
        # where the hostile value went in, the harmless one gives the same structure
        if isinstance(value, dict):
            got = _substitute(got, text, SAFE, exact=True)
        else:
            got = _substitute(got, str(value), str(safe_value))
            if context == "key/{}" and text:  # the key is also the mounted file's name
                got = _substitute(got, f"/{text}", f"/{SAFE}")
            if context == "{file_with}":  # the file's text, in the ConfigMap
                got = _substitute(got, value.read_text(), safe_value.read_text(), True)
        assert got == expected, f"{option}={text!r} changed the structure"
    # printable, quote-free text without spaces must still be accepted where it is a
    # free-form path (the checks refuse what breaks things, not every odd name)
    if context in ("{local_named}", "{out_named}", "{named_file}", "{file_with}"):
        assert accepted, f"{option}: every value refused"


def test_model_names_follow_what_tf_serving_can_address(tmp_path):
    for bad in ("a/b", "a:b", "", "-x", ".", "..", "a b", "a\nb", "x" * 129):
        with pytest.raises(UserError, match="model name") as err:
            tfdeploy.manifest("compose", "gs://b/x", model_name=bad, output_dir=tmp_path)
        assert err.value.param == "model_name"
    with pytest.raises(UserError, match="DNS-1035"):  # a Service name starts with a letter
        tfdeploy.manifest("k8s", "gs://b/x", model_name="1model", output_dir=tmp_path)
