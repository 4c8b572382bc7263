"""The model config file editor promote and rollback use (tfdeploy/rollout/config_text.py):
a label move changes only the label's bytes of a file a person wrote, and anything the
editor does not follow is rewritten in full, with a warning.  No server: the real-server
promote/rollback round trip over such a file is in tests/test_promote.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import text_format

from tfdeploy.rollout import labels
from tfdeploy.rollout.config_text import set_version_label

#: comments, blank lines, two models, both entry forms, a list of entries, strings with
#: ``#`` and escaped quotes, a model named by adjacent strings
CONFIG = """\
# Models of the segmentation service.  Keep "stable" on a version that passed review!
model_config_list {

  # the main model { not a brace }
  config {
    name: "deeplab"   # trailing comment with "quotes" and a {
    base_path: "/srv/models/#1 \\"deeplab\\" {x}"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }

    version_labels { key: "stable" value: 1 }  # reviewed 2026-11-30
    version_labels: < value: 2 key: 'canary' >
  }

  config: {
    name: "other" 'model'  # two strings: "othermodel"
    base_path: '/srv/models/other \\'o\\''
    version_labels: [ { key: "stable" value: 7 }, { key: "old", value: 3 } ];
  }
}
# end of file: keep me
"""


def parse(text: str):
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def expected(text: str, model: str, label: str, version: int):
    config = parse(text)
    (mc,) = [m for m in config.model_config_list.config if m.name == model]
    mc.version_labels[label] = version
    return config


@pytest.mark.parametrize(("model", "label", "old", "new"), [
    ("deeplab", "stable", "value: 1 }  # reviewed", "value: 4 }  # reviewed"),
    ("deeplab", "canary", "< value: 2 key: 'canary'", "< value: 4 key: 'canary'"),
    ("othermodel", "stable", '"stable" value: 7 }', '"stable" value: 4 }'),
    ("othermodel", "old", '"old", value: 3 }', '"old", value: 4 }'),
])
def test_an_existing_label_changes_its_value_and_nothing_else(model, label, old, new):
    edited = set_version_label(CONFIG, model, label, 4)
    assert CONFIG.count(old) == 1
    assert edited == CONFIG.replace(old, new)
    assert parse(edited) == expected(CONFIG, model, label, 4)


def test_a_new_label_goes_after_the_last_one_with_its_indentation():
    edited = set_version_label(CONFIG, "deeplab", "next", 12)
    assert edited == CONFIG.replace(
        "    version_labels: < value: 2 key: 'canary' >\n",
        "    version_labels: < value: 2 key: 'canary' >\n"
        '    version_labels { key: "next" value: 12 }\n')
    assert parse(edited) == expected(CONFIG, "deeplab", "next", 12)
    # after a list of entries (and its ';'), not inside it
    edited = set_version_label(CONFIG, "othermodel", "next", 5)
    assert edited == CONFIG.replace(
        '{ key: "old", value: 3 } ];\n',
        '{ key: "old", value: 3 } ];\n    version_labels { key: "next" value: 5 }\n')
    assert parse(edited) == expected(CONFIG, "othermodel", "next", 5)


def test_a_model_without_labels_gets_one_after_its_last_field():
    text = ("model_config_list {\n"
            "\tconfig {\n"
            '\t\tname: "deeplab"\n'
            '\t\tbase_path: "/m" # where\n'
            "\t}\n"
            '\tconfig { name: "one_line" base_path: "/o" }\n'
            "}\n")
    edited = set_version_label(text, "deeplab", "stable", 3)
    assert edited == text.replace('"/m" # where\n',
                                  '"/m" # where\n\t\tversion_labels { key: "stable" value: 3 }\n')
    one_line = set_version_label(text, "one_line", "a \"quoted\" label", 2)
    assert one_line == text.replace(
        'base_path: "/o" }',
        'base_path: "/o" version_labels { key: "a \\"quoted\\" label" value: 2 } }')
    assert parse(one_line) == expected(text, "one_line", 'a "quoted" label', 2)


def test_what_the_editor_does_not_follow_is_none():
    two = 'model_config_list { config { name: "d" } config { name: "d" } }'
    assert set_version_label(two, "d", "stable", 1) is None  # which one?
    assert set_version_label('model_config_list { config { name: "d" ', "d", "s", 1) is None
    assert set_version_label(CONFIG, "missing", "stable", 1) is None


def served(tmp_path: Path, text: str) -> labels.ServedConfig:
    path = tmp_path / "models.config"
    path.write_text(text)
    return labels.served_config(None, path)


def test_file_text_is_the_edit_when_it_parses_to_the_config_sent(tmp_path, caplog):
    s = served(tmp_path, CONFIG)
    labels.model_entry(s.config, "deeplab").version_labels["stable"] = 2
    with caplog.at_level(logging.WARNING, "tfdeploy.rollout"):
        text = labels.file_text(s, "deeplab", "stable", 2)
    assert text == CONFIG.replace("value: 1 }  # reviewed", "value: 2 }  # reviewed")
    assert caplog.records == []


def test_file_text_falls_back_to_the_full_config_with_one_warning(tmp_path, caplog):
    # a layout the editor refuses: the same model twice (which one to edit?)
    text = ('# mine\nmodel_config_list { config { name: "d" base_path: "/a" }\n'
            'config { name: "d" base_path: "/b" } }\n')
    s = served(tmp_path, text)
    labels.model_entry(s.config, "d").version_labels["stable"] = 2
    with caplog.at_level(logging.WARNING, "tfdeploy.rollout"):
        out = labels.file_text(s, "d", "stable", 2)
    assert out == text_format.MessageToString(s.config) and parse(out) == s.config
    # an edit that does not parse to the config sent (the file says /a, the server was
    # sent /z): the config sent wins, as before
    s = served(tmp_path, CONFIG)
    mc = labels.model_entry(s.config, "deeplab")
    mc.version_labels["stable"], mc.base_path = 2, "/z"
    with caplog.at_level(logging.WARNING, "tfdeploy.rollout"):
        out = labels.file_text(s, "deeplab", "stable", 2)
    assert parse(out) == s.config
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert all("rewritten in full to move label stable" in m and
               "without its comments" in m for m in messages), messages


def test_in_place_write_of_a_commented_file_no_prefix_is_another_config(tmp_path):
    s = served(tmp_path, CONFIG)
    inode = s.file.stat().st_ino
    labels.model_entry(s.config, "deeplab").version_labels["stable"] = 2
    labels.write_config_in_place(s.file, labels.file_text(s, "deeplab", "stable", 2))
    text = s.file.read_text()
    assert s.file.stat().st_ino == inode and parse(text) == s.config
    assert text.startswith("# Models of") and text.endswith("# end of file: keep me\n")
    # what a poll could read while the write is under way: nothing, or the whole config
    for end in range(len(text)):
        try:
            partial = parse(text[:end])
        except text_format.ParseError:
            continue
        assert partial.WhichOneof("config") is None or partial == s.config, text[:end]


def test_an_entry_without_a_value_gets_one():
    text = 'model_config_list { config { name: "d" version_labels { key: "s" } } }\n'
    edited = set_version_label(text, "d", "s", 3)
    assert edited == text.replace('key: "s" }', 'key: "s" value: 3 }')
    assert parse(edited) == expected(text, "d", "s", 3)


def test_crlf_line_ends_stay_crlf_through_an_atomic_write(tmp_path):
    crlf = CONFIG.replace("\n", "\r\n")
    path = tmp_path / "models.config"
    path.write_bytes(crlf.encode())
    s = labels.served_config(None, path)
    labels.model_entry(s.config, "deeplab").version_labels["next"] = 2
    labels.write_config_atomic(path, labels.file_text(s, "deeplab", "next", 2))
    assert path.read_bytes() == crlf.replace(
        "key: 'canary' >\r\n",
        "key: 'canary' >\r\n    version_labels { key: \"next\" value: 2 }\r\n").encode()
