"""cdrwatch: fair-use and fraud detection and re-billing on streams of CDRs and SIP registrations."""

from pathlib import Path as _Path

__version__ = "0.1.0"


def _check_compiled(package: _Path) -> None:
    """In a source checkout, refuse a module compiled (mypyc) from an older version of its source:
    Python would load the extension and silently run the old code."""
    if not (package.parent / "pyproject.toml").is_file():
        return  # an installed wheel: its extensions and sources come from the same build
    for ext in [*package.glob("*.cpython-*.so"), *package.glob("core/*.cpython-*.so")]:
        source = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if source.is_file() and source.stat().st_mtime > ext.stat().st_mtime:
            raise ImportError(
                f"{source} changed after it was compiled to {ext.name}: run `make install` to recompile, "
                f"or `make uncompiled` to run the pure-Python source"
            )


_check_compiled(_Path(__file__).resolve().parent)
