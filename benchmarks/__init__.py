"""The scripts behind BENCHMARKS.md, run from the repository's root as
``python -m benchmarks.<name>``; they share code by importing each other as this package."""
