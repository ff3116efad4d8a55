import configparser
from pathlib import Path

import seq2seq_distill

ROOT = Path(__file__).resolve().parents[1]


def test_setup_cfg_requirements_equal_requirements_txt():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = {line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()}
    listed = {
        line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")
    }
    assert declared == listed


def test_public_api_is_importable_from_the_package_root():
    for name in seq2seq_distill.__all__:
        assert getattr(seq2seq_distill, name) is not None, name
