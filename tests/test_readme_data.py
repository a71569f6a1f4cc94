"""README's data commands run as written: every `vl data ...` line of README.md's code blocks, in order, in a
fresh folder holding what the README says they read (a `videos/` folder and `ann.jsonl` made from the README's
own example row). Each line is split as bash splits it and handed to `vl`'s console entry point."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from conftest import encode_indexed_clip
from vl.cli import main as vl_main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The `vl data` command lines inside README's fenced code blocks; the overview table of `vl`'s commands
    (`vl data      shards | inspect | synth   ...`) is a list of subcommands, not a command."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("vl data ")]
    return [line for line in lines if not re.match(r"vl data\s+\w+ \| ", line)]


def readme_annotation_row() -> dict:
    """The JSONL example row README gives for `vl data shards`."""
    match = re.search(r"JSONL rows such as\s*`(\{.*?\})`", README.read_text(encoding="utf-8"), flags=re.S)
    assert match, "README's Data section lost its example annotation row"
    return json.loads(match.group(1).replace("\n", " "))


def test_readme_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert [c.split()[2] for c in commands] == ["synth", "inspect", "shards", "inspect"], commands
    row = readme_annotation_row()
    video = tmp_path / "videos" / row["video"]
    video.parent.mkdir(parents=True)
    video.write_bytes(encode_indexed_clip(num_frames=32, fps=4))  # 8 s: holds the row's start/end
    (tmp_path / "ann.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)

    outputs = []
    for line in commands:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "vl"
        status = vl_main(argv[1:])
        out = capsys.readouterr()
        assert status == 0, f"{line}\n{out.out}\n{out.err}"
        outputs.append(out.out)

    synth = json.loads((tmp_path / "data" / "synth" / "splits.json").read_text())
    assert {k: v["num_samples"] for k, v in synth["splits"].items()} == {"train": 200, "val": 50, "test": 50}
    assert "samples             50 (50 usable)" in outputs[1] and "failures            none" in outputs[1]
    assert "wrote 1 samples in 1 shards" in outputs[2]
    report = json.loads(outputs[3])
    assert report["usable"] == 1 and report["failures"] == {}
    assert report["examples"] == [f"{report['examples'][0].split(':')[0]}: {row['captions'][0]}"]
    assert report["captions_per_sample"]["max"] == len(row["captions"])
