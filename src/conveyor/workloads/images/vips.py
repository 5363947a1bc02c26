"""libvips set up for hostile input: only the four loaders we accept, no cache, few threads."""

from __future__ import annotations

import ctypes
import logging
import threading

import pyvips

# Formats we accept, and the libvips loaders that read them from memory.
LOADERS: dict[str, str] = {
    "jpeg": "VipsForeignLoadJpegBuffer",
    "png": "VipsForeignLoadPngBuffer",
    "webp": "VipsForeignLoadWebpBuffer",
    "avif": "VipsForeignLoadHeifBuffer",
}
LOADER_NICKNAMES: dict[str, str] = {
    "jpeg": "jpegload_buffer",
    "png": "pngload_buffer",
    "webp": "webpload_buffer",
    "avif": "heifload_buffer",
}

# glibc's mallopt parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
LARGE_BLOCK = 128 * 1024

_configured = False
# libvips reports every step at info level; only its warnings are worth a log line.
logging.getLogger("pyvips").setLevel(logging.WARNING)
_lock = threading.Lock()


def configure(concurrency: int = 1, *, tune_malloc: bool = True) -> None:
    """Once per process. Every other loader (SVG, PDF, ImageMagick, matrix files...) is
    blocked, so a file can never reach a parser we did not mean to expose; the operation
    cache is off, so memory is given back after each image."""
    global _configured
    with _lock:
        if _configured:
            return
        if tune_malloc:
            _frugal_malloc()
        pyvips.cache_set_max(0)
        pyvips.concurrency_set(concurrency)
        pyvips.block_untrusted_set(True)
        pyvips.operation_block_set("VipsForeignLoad", True)
        for loader in LOADERS.values():
            pyvips.operation_block_set(loader, False)
        _configured = True


def _frugal_malloc() -> None:
    """glibc gives each thread that allocates its own arena, and libvips' and the AV1
    encoder's threads each keep their own high-water mark, image after image. Two arenas,
    and mmap for blocks over 128 KiB (given back as soon as they are freed), about halve a
    worker process's peak for about 4% more CPU (docs/images.md). Before any thread starts."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl, macOS): nothing to tune
    mallopt(M_ARENA_MAX, 2)
    mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    mallopt(M_TRIM_THRESHOLD, LARGE_BLOCK)
