"""The project-code fingerprint the Ray driver and the Flower server compare with their workers' and sites'."""
import logging

from federation.transports.code_identity import CODE_PACKAGES, code_fingerprint


def test_the_code_fingerprint_follows_every_py_file_of_the_packages(tmp_path):
    for pkg in CODE_PACKAGES:
        (tmp_path / pkg / "sub").mkdir(parents=True)
        (tmp_path / pkg / "sub" / "m.py").write_text("x = 1\n")
    before = code_fingerprint(tmp_path)
    (tmp_path / "federation" / "sub" / "m.py").write_text("x = 2\n")
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) != before
    (tmp_path / "federation" / "sub" / "m.py").write_text("x = 1\n")
    (tmp_path / "federation" / "notes.txt").write_text("not code")
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) == before
    (tmp_path / "engine" / "new.py").write_text("")  # a file added counts too
    code_fingerprint.cache_clear()
    assert code_fingerprint(tmp_path) != before


def test_a_flower_site_on_other_code_is_a_warning_naming_it(caplog):
    """A review: Flower ships no code here (each host installs the project); a site on another commit trained
    with it unseen. The site's query answer carries its fingerprint; another one is a warning naming the site."""
    from federation.transports.flower.executor import check_code

    with caplog.at_level(logging.WARNING):
        assert check_code("hospital_a", 3, {"site": "hospital_a", "code": code_fingerprint()})
        assert not caplog.records
        assert not check_code("hospital_b", 4, {"site": "hospital_b", "code": "0" * 64})
        assert not check_code("hospital_c", 5, {"site": "hospital_c"})  # an older site sends none
    lines = [r.getMessage() for r in caplog.records]
    assert "site hospital_b (node 4) runs other project code" in lines[0] and "000000000000" in lines[0]
    assert "site hospital_c (node 5)" in lines[1] and "sent no fingerprint" in lines[1]
