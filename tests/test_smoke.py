from __future__ import annotations

import divergefork as df


def test_package_imports() -> None:
    assert df.RETURNED_EXIT_CODE == 70
