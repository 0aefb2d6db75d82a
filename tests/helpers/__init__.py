"""Helpers shared by the tests and the benchmarks: tiny models and their inputs (`models`), synthetic images and
image folders (`images`), and trainer set-ups (`training`). Import the module that defines a name."""
