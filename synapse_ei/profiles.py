"""Install the workflow's Snakemake profiles where Snakemake looks up a profile *name*.

``snakemake --profile slurm`` finds a profile named ``slurm`` in the working directory, then in
Snakemake's user config directory (``$XDG_CONFIG_HOME/snakemake``, else
``~/.config/snakemake`` on Linux), then its site config directory (``/etc/xdg/snakemake``).
:func:`install` links each of ``profiles/<name>/`` there, so the name works as well as the path
``--profile profiles/slurm``; a link (not a copy) keeps the repository's profile the one place
to edit. ``make profiles`` runs ``python -m synapse_ei.profiles``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from synapse_ei.errors import DataError

#: The repository's profiles: one directory per profile, each with a config.yaml.
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


@dataclass(frozen=True)
class Installed:
    name: str
    link: Path
    target: Path
    already: bool


def profile_names(source: Path = PROFILES_DIR) -> list[str]:
    """The profiles in ``source``: its subdirectories holding a config.yaml."""
    return sorted(path.parent.name for path in source.glob("*/config.yaml"))


def user_profile_dir() -> Path:
    """Where Snakemake looks for profile names of this user, as Snakemake itself computes it."""
    from snakemake.common import get_appdirs

    return Path(get_appdirs().user_config_dir)


def install(dest: Path | None = None, source: Path = PROFILES_DIR) -> list[Installed]:
    """Link every profile of ``source`` into ``dest`` (default: :func:`user_profile_dir`).

    A name already there that is not a link to this profile is left alone: the others are
    installed, then a :class:`DataError` names each such path and what to do.
    """
    dest = Path(dest) if dest is not None else user_profile_dir()
    names = profile_names(source)
    if not names:
        raise DataError(f"{source}: no profile (a directory with a config.yaml) to install.")
    dest.mkdir(parents=True, exist_ok=True)
    done, conflicts = [], []
    for name in names:
        target = (source / name).resolve()
        link = dest / name
        if link.is_symlink() and link.resolve() == target:
            done.append(Installed(name, link, target, already=True))
        elif link.exists() or link.is_symlink():
            what = f"a link to {os.readlink(link)}" if link.is_symlink() else "not a link"
            conflicts.append(
                f"{link} exists and is {what}, not this workflow's profile {target}. Keep it and "
                f"run with `--profile {target}`, or move it away (`mv {link} {link}.old`) and "
                "run `make profiles` again."
            )
        else:
            link.symlink_to(target, target_is_directory=True)
            done.append(Installed(name, link, target, already=False))
    if conflicts:
        installed = ", ".join(item.name for item in done) or "none"
        raise DataError(
            f"profiles installed in {dest}: {installed}; not installed:\n" + "\n".join(conflicts)
        )
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synapse_ei.profiles",
        description="Link profiles/<name>/ where `snakemake --profile <name>` finds it.",
    )
    parser.add_argument(
        "--dest", type=Path, default=None,
        help="directory to link them into (default: Snakemake's user config directory, "
        "$XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        installed = install(args.dest)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for item in installed:
        state = "already installed" if item.already else "installed"
        print(f"{item.name}: {state}, {item.link} -> {item.target}")
    names = ", ".join(f"`snakemake --profile {item.name}`" for item in installed)
    print(f"From {PROFILES_DIR.parent}, run {names}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
