"""The documentation stays true to the repository: a short README, links that resolve, the test
command CI runs, and every command in the README's table."""

import re
from pathlib import Path

from pecft_cli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "cli/README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def relative_links(page: Path) -> list[str]:
    """The page's links to files in the repository (not web addresses or anchors on the page),
    outside code blocks, without their #anchor."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    targets = [match.group(1).split("#", 1)[0] for match in LINK.finditer(text)]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_readme_is_at_most_two_hundred_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_every_relative_link_resolves_to_a_file() -> None:
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target in relative_links(page)
        if not (page.parent / target).exists()
    ]
    assert len(relative_links(README)) >= 10
    assert not broken, broken


def test_the_link_finder_skips_code_web_addresses_and_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "[a](docs/a.md#x) [b](https://example.org) [c](#here)\n```\n[d](d.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["docs/a.md"]


def test_the_readme_gives_the_test_command_ci_runs() -> None:
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
    (command,) = [line for line in ci if " -m pytest" in line]
    readme = README.read_text(encoding="utf-8").splitlines()
    given = [line for line in readme if " -m pytest" in line]
    assert given and all(line.endswith(command) for line in given), (given, command)


def test_the_readme_lists_every_command() -> None:
    readme = README.read_text(encoding="utf-8")
    names = [command.name for command in app.registered_commands]
    assert len(names) >= 7
    for name in names:
        assert f"| `pecft {name}" in readme, name
