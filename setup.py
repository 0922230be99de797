"""Packaging for nni-visplugin.

``spaces/`` installs as ``nni_visplugin.spaces``: a top-level package called ``spaces``
would collide with an unrelated package on PyPI.
"""
from setuptools import setup

EXPORT = ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.3"]

setup(
    name="nni-visplugin",
    version="0.1.0",
    description="Differentiable neural architecture search for computer vision, as a plugin for Microsoft NNI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "nni_visplugin",
        "nni_visplugin.strategies",
        "nni_visplugin.tuners",
        "nni_visplugin.spaces",
    ],
    package_dir={"nni_visplugin.spaces": "spaces"},
    install_requires=[
        # NNI 3.0 is the last release; everything below is pinned to what it runs with.
        "nni==3.0",
        # nnictl imports pkg_resources, which setuptools 81 removed.
        "setuptools<81",
        # NNI 3.0 breaks on typeguard 4.1.3 and later.
        "typeguard<4.1.3",
        "torch>=2.1,<=2.14.1",
        "torchvision>=0.16,<=0.29.1",
        "pytorch-lightning>=2.0,<2.7",
        "optuna>=3.4",
        "cmaes>=0.10",  # the tuner's cmaes sampler
        "scikit-learn>=1.2",  # the embedded digits dataset
        "PyYAML>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # Pareto plots and report figures
    ],
    extras_require={
        # A shared Optuna study on a PostgreSQL server (tuner classArgs storage_env).
        "postgres": ["psycopg2-binary>=2.9"],
        # nni-visplugin export: torch.onnx's exporter needs onnxscript; onnxruntime checks the file.
        "export": EXPORT,
        "test": ["pytest>=7", "pytest-timeout>=2.1", "psycopg2-binary>=2.9", *EXPORT],
    },
    entry_points={
        "console_scripts": ["nni-visplugin=nni_visplugin.cli:main"],
        # Other pip packages add spaces and strategies through these same groups.
        "nni_visplugin.spaces": [],
        "nni_visplugin.strategies": [],
    },
)
