"""attnlab-capture: run vLLM's and AITER's attention kernels on attnlab cases and write fixtures."""

__version__ = "0.1.0"
