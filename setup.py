"""Which files the wheel carries; everything else about the package is in pyproject.toml.

Besides the cogumi packages, a run reads three folders of this repository: the gate files
(gates/), the fixtures the tiny profile names (fixtures/) and the committed benchmark
results `cogumi plan` reads (benchmarks/results/). The wheel maps them into the package,
under cogumi/_data/, where cogumi.locations finds them when there is no checkout. (This file
exists because pyproject.toml cannot both discover packages and map extra folders in.)
"""

from setuptools import find_packages, setup

DATA = {"cogumi._data.gates": "gates", "cogumi._data.fixtures": "fixtures",
        "cogumi._data.benchmarks.results": "benchmarks/results"}

setup(packages=find_packages(include=["cogumi", "cogumi.*"]) + list(DATA),
      package_dir=DATA)
