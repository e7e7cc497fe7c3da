"""What the owners review is what runs, and it is who it says it is.

A hostile analyst in a running room (real API over HTTP, real signed approvals) tries to:
- submit a plugin under another analyst's plugin name, to read that analyst's private code in the
  "changes since the last approved version" diff and to have the owners' page present the attack as
  an update of the approved plugin;
- hide code from the reviewers with invisible characters ("Trojan Source": bidi controls that make
  the page draw code in another order than it runs, zero-width characters, look-alike identifiers)
  in the source, the manifest, its name and description, or any other file of the bundle.
Each attack sits next to a harmless control that passes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cleanroom import bundle, review
from cleanroom.errors import BundleError, Conflict, NotFound, ValidationError
from cleanroom.store.db import dumps, now
from tests.redteam.test_api_attacks import _register_room_key
from tests.scenario_setup import setup_scenario
from tests.test_web import csrf_of

REPO = Path(__file__).resolve().parents[2]
IMPUTE = REPO / "plugins" / "impute"


def _folder(
    root: Path,
    name: str,
    code: str,
    *,
    version: str = "1.0.0",
    description: str = "a plugin",
    extra: dict[str, str] | None = None,
    folder_name: str | None = None,
) -> Path:
    folder = root / (folder_name or re.sub(r"[^a-z0-9-]", "x", name))
    folder.mkdir(parents=True)
    manifest = (
        f'name = "{name}"\nversion = "{version}"\nkind = "preprocess"\nentry = "plugin.py"\n'
        f'description = "{description}"\n'
    )
    (folder / "cleanroom-plugin.toml").write_text(manifest, encoding="utf-8")
    (folder / "plugin.py").write_text(code, encoding="utf-8")
    for rel, text in (extra or {}).items():
        (folder / rel).write_text(text, encoding="utf-8")
    return folder


HONEST = "from cleanroom.hookspecs import hookimpl\n\n\n@hookimpl\ndef preprocess(df, params):\n    return df\n"


def _page(room: Any, token: str, path: str) -> str:
    client = httpx.Client(base_url=room.url, follow_redirects=False, timeout=30)
    form = client.get("/ui/login")
    r = client.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)}, headers={"origin": room.url})
    assert r.status_code == 303, r.text
    page = client.get(path)
    assert page.status_code == 200, page.text
    return page.text


@pytest.fixture
def world(room: Any, tmp_path: Path) -> tuple[Any, Any, Any, dict[str, str]]:
    _register_room_key(room)
    retailer, bank, analyst, _, ids = setup_scenario(room.org, tmp_path, 200, approve=True)
    return retailer, bank, analyst, ids


def _squat(room: Any, tmp_path: Path, attacker: Any, name: str, version: str, code: str) -> str:
    """A plugin of another org under `name`, written to the store as a room from before the name rule
    would hold it (the API refuses to create one now: see the test above)."""
    folder = _folder(tmp_path / "squat", name, code, version=version)
    archive = bundle.pack(folder)
    parsed = bundle.unpack(archive)
    plugin_id = room.store.blobs.put_bytes(archive)
    org_id = attacker.whoami()["id"]
    with room.store.tx() as conn:
        conn.execute(
            "INSERT INTO plugins (id, name, version, kind, manifest, review, size, submitted_by,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                plugin_id,
                name,
                version,
                "preprocess",
                dumps(parsed.manifest),
                dumps(review.review(parsed).to_dict()),
                len(archive),
                org_id,
                now(),
            ),
        )
    return plugin_id


# Names belong to their lineage -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.1", "2.0.0", "1.0.0", "0.9.0"])
def test_another_orgs_plugin_name_cannot_be_taken(world, room, tmp_path, version):
    retailer, _, analyst, ids = world
    mallory = room.org("mallory", "analyst")
    folder = _folder(tmp_path, "impute", "# mallory's impute\n" + HONEST, version=version)
    with pytest.raises(Conflict, match="belongs to another org"):
        mallory.submit_plugin(folder)
    assert mallory.list_plugins() == []
    assert mallory.submit_plugin(_folder(tmp_path / "own", "mallory-impute", HONEST))["created"]  # control
    # the owner of the name still publishes new versions of it (control)
    folder = tmp_path / "impute-next"
    shutil.copytree(IMPUTE, folder)
    manifest = folder / "cleanroom-plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text() + "\n# 1.0.1\n")
    assert analyst.submit_plugin(folder)["created"]


@pytest.mark.parametrize("name", ["lmpute", "irnpute", "impute\n", "impute\u200b", "\u0456mpute", "IMPUTE"])
def test_look_alike_plugin_names_are_refused(world, room, tmp_path, name):
    mallory = room.org("mallory", "analyst")
    folder = _folder(tmp_path, name.replace("\n", "\\n"), HONEST, folder_name="lookalike")
    with pytest.raises((ValidationError, BundleError)) as refused:
        mallory.submit_plugin(folder)
    assert "impute" in str(refused.value.message) or "name" in str(refused.value.message)
    assert mallory.list_plugins() == []
    assert mallory.submit_plugin(_folder(tmp_path / "ok", "mallory-cleaner", HONEST))["created"]  # control


def test_a_squatted_name_never_diffs_against_another_orgs_code(world, room, tmp_path):
    retailer, _, analyst, ids = world
    mallory = room.org("mallory", "analyst")
    squat = _squat(room, tmp_path, mallory, "impute", "1.0.1", HONEST)
    secret_line = next(line for line in (IMPUTE / "plugin.py").read_text().splitlines() if line.strip())
    # the attacker reads its own plugin: no diff against acme's approved impute, none of its code
    view = mallory.get_plugin(squat)
    assert view["diff_against"] is None
    assert secret_line not in str(view)
    # nor by name@version of acme's plugin, nor by its id: "not found", as for a plugin that never was
    for ref in ("impute@1.0.0", ids["impute"], ids["impute"][:12]):
        with pytest.raises(NotFound, match="^plugin not found$"):
            mallory.get_plugin(ref)
    # the owner's view says whose plugin it is and that it replaces nothing
    owner_view = retailer.get_plugin(squat)
    assert owner_view["submitted_by"] == "mallory" and owner_view["diff_against"] is None
    page = _page(room, retailer.token, f"/ui/plugins/{squat}")
    assert "Submitted by mallory" in page and "replaces nothing" in page
    assert "Changes since" not in page and "acme-analytics" not in page.split("Approve or reject")[0]


def test_the_owners_page_says_what_a_real_update_replaces(world, room, tmp_path):
    retailer, _, analyst, ids = world
    folder = tmp_path / "impute-next"
    shutil.copytree(IMPUTE, folder)
    manifest = folder / "cleanroom-plugin.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"'))
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text() + "\nEXTRA = 1\n")
    new = analyst.submit_plugin(folder)["id"]
    view = retailer.get_plugin(new)
    assert view["diff_against"]["id"] == ids["impute"]
    assert view["diff_against"]["submitted_by"] == "acme-analytics"
    assert "retail.purchases" in view["diff_against"]["approved_for"]
    assert "+EXTRA = 1" in view["diff_against"]["diff"]
    page = _page(room, retailer.token, f"/ui/plugins/{new}")
    assert "Submitted by acme-analytics" in page
    assert f"replaces impute 1.0.0 ({ids['impute'][:16]})" in page
    assert "Changes since the last approved version 1.0.0" in page
    # the analyst sees the same diff of its own code (control)
    assert analyst.get_plugin(new)["diff_against"]["id"] == ids["impute"]


# Trojan Source and other hidden text --------------------------------------------------------------

ATTACKS = {
    # the comment closes before the RLO for the interpreter; the page would draw it over the code
    "bidi-override": HONEST.replace(
        "    return df\n",
        "    admin = False  # \u202e } \u2066if admin:\u2069 \u2066 begin admins only\n    return df\n",
    ),
    "bidi-isolate-in-string": HONEST.replace(
        "    return df\n", "    tag = 'user\u2067 \u2066// check if admin\u2069 \u2066'\n    return df\n"
    ),
    "zero-width-in-string": HONEST.replace("    return df\n", "    key = 'ad\u200bmin'\n    return df\n"),
    "homoglyph-identifier": HONEST.replace("    return df\n", "    \u0430dmin = True\n    return df\n"),
    "fullwidth-identifier": HONEST.replace("    return df\n", "    \uff45xtra = 1\n    return df\n"),
    "bom-mid-file": HONEST.replace("\n\n\n", "\n\ufeff\n\n"),
    "escape-sequence": HONEST.replace("    return df\n", "    # \x1b[2K hidden\n    return df\n"),
    # "ASCII smuggling": Unicode tag characters spell text no one sees; variation selectors carry bytes
    "tag-characters": HONEST.replace(
        "    return df\n", "    # ok" + "".join(chr(0xE0000 + ord(c)) for c in "leak") + "\n    return df\n"
    ),
    "variation-selectors": HONEST.replace("    return df\n", "    note = 'a\ufe01\U000e0105'\n    return df\n"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_hidden_characters_in_code_are_blocking_findings_and_shown_on_the_page(room, tmp_path, attack):
    owner = room.org("retailer", "owner")
    mallory = room.org("mallory", "analyst")
    view = mallory.submit_plugin(_folder(tmp_path, f"trojan-{attack}", ATTACKS[attack]))
    rules = {(f["rule"], f["severity"]) for f in view["review"]["findings"]}
    assert rules & {("hidden-character", "blocking"), ("confusable-identifier", "blocking")}, rules
    assert view["blocking_findings"] >= 1
    page = _page(room, owner.token, f"/ui/plugins/{view['id']}")
    hidden = [c for c in ATTACKS[attack] if review.hidden_text("x", c.encode())]
    for char in hidden:
        assert char not in page, f"U+{ord(char):04X} reached the page raw"
        assert f"&lt;U+{ord(char):04X}&gt;" in page
    assert "hidden-char" in page or "confusable-identifier" in page


@pytest.mark.parametrize("where", ["description", "readme", "data-file"])
def test_hidden_characters_anywhere_in_the_bundle_are_findings(room, tmp_path, where):
    mallory = room.org("mallory", "analyst")
    rlo = "\u202e"
    kw: dict[str, Any] = (
        {"description": f"harmless {rlo}txt.exe"}
        if where == "description"
        else {"extra": {"README.md" if where == "readme" else "weights.csv": f"note {rlo} here\n"}}
    )
    view = mallory.submit_plugin(_folder(tmp_path, f"hidden-{where}", HONEST, **kw))
    findings = [f for f in view["review"]["findings"] if f["rule"] == "hidden-character"]
    assert findings and findings[0]["severity"] == "blocking" and "<U+202E>" in findings[0]["message"]
    assert findings[0]["file"] == (
        "cleanroom-plugin.toml" if where == "description" else "README.md" if where == "readme" else "weights.csv"
    )


def test_honest_unicode_is_not_a_finding(room, tmp_path):
    """Control: accents, CJK and emoji in comments, strings and descriptions are ordinary text."""
    mallory = room.org("mallory", "analyst")
    code = HONEST.replace("    return df\n", "    # café, naïve, 東京, 👍\n    label = 'Zürich'\n    return df\n")
    view = mallory.submit_plugin(_folder(tmp_path, "unicode-ok", code, description="Prüfung der Daten"))
    assert view["review"]["findings"] == []
    owner = room.org("retailer", "owner")
    page = _page(room, owner.token, f"/ui/plugins/{view['id']}")
    assert "Zürich" in page and "東京" in page and 'hidden-char"' not in page


def test_hidden_characters_in_a_dataset_description_are_shown_as_markers(room):
    owner = room.org("retailer", "owner")
    from tests.test_web import add_dataset

    add_dataset(room, owner.whoami()["id"], "shop", "weekly spend \u202edesrever\u202c and \u200bmore")
    page = _page(room, owner.token, "/ui/datasets/shop")
    assert "\u202e" not in page and "\u200b" not in page
    assert "&lt;U+202E&gt;" in page and "&lt;U+200B&gt;" in page and "&lt;U+202C&gt;" in page
    assert "weekly spend" in page  # control: the visible text is there


def test_a_flood_of_hidden_characters_is_counted_not_listed():
    flood = ("x = 1  # " + "\u200b" * 500 + "\n").encode()
    findings = review.hidden_text("plugin.py", flood)
    assert len(findings) == review.MAX_HIDDEN_FINDINGS + 1
    assert "480 more hidden characters" in findings[-1].message
    assert review.hidden_text("plugin.py", b"x = 1  # plain\n") == []  # control
