"""Downloading MNIST-style data sets, offline: a local ``http.server`` in a thread serves small
crafted IDX ``.gz`` files -- good, corrupt, missing (404) and truncated -- and the expected MD5s
are monkeypatched into ``data.SOURCES`` (the published ones stay in the code).  A file must
appear in the data directory only once it verifies, and every failure must name the file and
the fault."""
import functools
import hashlib
import http.server
import os
import re
import socket
import threading

import numpy as np
import pytest

from jaxcnn import cli, data, train

FILES = [name + ".gz" for name in data.IDX_FILES.values()]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the temp tree; under ``/truncated/`` only the first half of each body, after a
    ``Content-Length`` announcing all of it; under ``/oddlength/`` a ``Content-Length`` of
    "\u00b2" (a digit to ``str.isdigit``, not to ``int``)."""

    def send_header(self, keyword, value):
        if keyword == "Content-Length" and self.path.startswith("/oddlength/"):
            value = "\u00b2"
        super().send_header(keyword, value)

    def copyfile(self, source, outputfile):
        body = source.read()
        outputfile.write(body[:len(body) // 2] if self.path.startswith("/truncated/") else body)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``(base URL, {file: md5})``: ``good/`` holds the four files of a tiny set, ``corrupt/``
    the same with one byte of the test labels changed, ``missing/`` lacks the test labels (a
    404), ``truncated/`` cuts every body in half."""
    root = tmp_path_factory.mktemp("site")
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
              "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 40).astype(np.uint8),
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
              "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 20).astype(np.uint8)}
    md5 = {}
    for folder in ("good", "corrupt", "missing", "truncated", "oddlength"):
        os.makedirs(root / folder)
        for name, array in arrays.items():
            data.write_idx(root / folder / name, array)
            md5[name] = hashlib.md5((root / folder / name).read_bytes()).hexdigest()
    body = bytearray((root / "corrupt" / FILES[3]).read_bytes())
    body[-9] ^= 0xFF                                   # a byte of the deflate stream's tail
    (root / "corrupt" / FILES[3]).write_bytes(bytes(body))
    os.remove(root / "missing" / FILES[3])
    server = http.server.HTTPServer(("127.0.0.1", 0),
                                    functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", md5, arrays
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def published(site, monkeypatch):
    """Point ``SOURCES["mnist"]`` at ``missing/`` then ``good/`` with the crafted files' MD5s:
    the role of the published mirrors, the first of them lacking a file."""
    base, md5, _ = site
    monkeypatch.setitem(data.SOURCES, "mnist",
                        data.Source((f"{base}/missing/", f"{base}/good/"), md5))
    return base, md5


def test_the_published_table_is_intact():
    for name, source in data.SOURCES.items():
        assert sorted(source.md5) == sorted(FILES), name
        assert all(url.startswith(("http://", "https://")) and url.endswith("/")
                   for url in source.urls)
    assert data.SOURCES["mnist"].urls[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert data.SOURCES["mnist"].md5[FILES[0]] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert data.SOURCES["fashion-mnist"].md5[FILES[3]] == "bb300cfdad3c16e7a12a480ee83cd310"


def test_download_tries_the_mirrors_in_order_and_moves_verified_files(tmp_path, published,
                                                                    site, monkeypatch):
    base, md5 = published
    moves, real_replace = [], os.replace

    def replace(src, dst):                  # the file is complete and verified when it moves
        with open(src, "rb") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5[os.path.basename(dst)]
        moves.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    lines = []
    paths = data.download("mnist", tmp_path / "d", log=lines.append)
    assert sorted(os.listdir(tmp_path / "d")) == sorted(FILES)         # no .part left
    assert paths == {role: str(tmp_path / "d" / (name + ".gz"))
                     for role, name in data.IDX_FILES.items()}
    assert [os.path.basename(dst) for _, dst in moves] == FILES
    assert all(os.path.dirname(src) == str(tmp_path / "d") and src.endswith(".part")
               for src, _ in moves)
    assert lines[0].startswith(f"train-images-idx3-ubyte.gz: downloaded from {base}/missing/"
                               f"train-images-idx3-ubyte.gz (")
    assert lines[3].startswith(f"t10k-labels-idx1-ubyte.gz: downloaded from {base}/good/")
    assert lines[3].endswith(f"bytes, MD5 {md5[FILES[3]]} verified)")
    ds = data.load("mnist", tmp_path / "d")
    np.testing.assert_array_equal(ds.y_test, site[2][FILES[3]])

    lines.clear()                           # a second run keeps the verified files
    data.download("mnist", tmp_path / "d", log=lines.append)
    assert lines == [f"{f}: already in {tmp_path / 'd'}, MD5 {md5[f]} verified" for f in FILES]
    assert len(moves) == 4


@pytest.mark.parametrize("folder, fault", [
    ("corrupt", "MD5 mismatch: expected {md5}, got [0-9a-f]{{32}} \\(\\d+ bytes\\)"),
    ("missing", "HTTP 404 File not found"),
    ("truncated", "truncated: got \\d+ of the \\d+ bytes announced"),
])
def test_a_failed_download_leaves_nothing_and_names_the_fault(tmp_path, published, folder,
                                                             fault):
    base, md5 = published
    name = FILES[3] if folder != "truncated" else FILES[0]
    url = f"{base}/{folder}/{name}"
    with pytest.raises(data.DownloadError, match=f"^{name}: could not download it into "
                                                 f"{tmp_path} \\({url}: "
                                                 f"{fault.format(md5=md5[name])}\\); nothing "
                                                 f"was written$"):
        data.download("mnist", tmp_path, mirror=f"{base}/{folder}")
    expected = [] if folder == "truncated" else FILES[:3]   # the files before it did verify
    assert sorted(os.listdir(tmp_path)) == sorted(expected)


def test_a_content_length_that_is_no_number_is_ignored(tmp_path, published):
    """The body is read to its end and verified by its MD5, as without the header."""
    base, md5 = published
    lines = []
    data.download("mnist", tmp_path, mirror=f"{base}/oddlength", log=lines.append)
    assert [line.split(":")[0] for line in lines] == FILES
    assert all(line.endswith("verified)") for line in lines)


def test_a_file_with_the_wrong_md5_is_replaced_only_by_a_verified_one(tmp_path, published):
    base, md5 = published
    (tmp_path / FILES[3]).write_bytes(b"stale")
    with pytest.raises(data.DownloadError, match="MD5 mismatch"):
        data.download("mnist", tmp_path, mirror=f"{base}/corrupt/")
    assert (tmp_path / FILES[3]).read_bytes() == b"stale"
    data.download("mnist", tmp_path, mirror=f"{base}/good/")
    assert hashlib.md5((tmp_path / FILES[3]).read_bytes()).hexdigest() == md5[FILES[3]]


def test_a_file_that_cannot_be_read_is_downloaded_again(tmp_path, published, monkeypatch):
    base, md5 = published
    (tmp_path / FILES[2]).write_bytes(b"unreadable")
    real = data._md5

    def md5_of(path):                       # root reads a mode-000 file: refuse it by hand
        if os.path.basename(path) == FILES[2]:
            raise PermissionError(13, "Permission denied", path)
        return real(path)
    monkeypatch.setattr(data, "_md5", md5_of)
    lines = []
    data.download("mnist", tmp_path, mirror=f"{base}/good", log=lines.append)
    assert lines[2].startswith(f"{FILES[2]}: downloaded from {base}/good/{FILES[2]} (")
    assert hashlib.md5((tmp_path / FILES[2]).read_bytes()).hexdigest() == md5[FILES[2]]


def test_an_uncompressed_copy_is_kept(tmp_path, published):
    base, _ = published
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(40, np.uint8))
    lines = []
    paths = data.download("mnist", tmp_path, mirror=f"{base}/good", log=lines.append)
    assert paths["y_train"] == str(tmp_path / "train-labels-idx1-ubyte")
    assert lines[1] == f"train-labels-idx1-ubyte: already in {tmp_path}, uncompressed (kept, " \
                       f"not verified)"
    assert "train-labels-idx1-ubyte.gz" not in os.listdir(tmp_path)
    assert data.load("mnist", tmp_path).y_train.sum() == 0


@pytest.mark.parametrize("make", ["dangling link", "directory"])
def test_an_uncompressed_name_that_is_no_file_is_not_kept(tmp_path, published, make):
    """A dangling link or a directory where an IDX file would be is no copy: refused, naming
    it, where it used to be reported as kept and the download as done."""
    base, _ = published
    raw = tmp_path / "train-labels-idx1-ubyte"
    if make == "directory":
        raw.mkdir()
    else:
        raw.symlink_to(tmp_path / "nowhere")
    what = "is a directory; expected a regular file" if make == "directory" else \
        f"is a link to {tmp_path / 'nowhere'}, which does not exist"
    with pytest.raises(ValueError, match=f"^{re.escape(str(raw))}: {what}.*; move it away to "
                                         f"download train-labels-idx1-ubyte.gz"):
        data.download("mnist", tmp_path, mirror=f"{base}/good")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".gz")]   # nothing fetched first


def test_every_request_has_a_timeout(tmp_path, published):
    with socket.create_server(("127.0.0.1", 0)) as silent:      # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(data.DownloadError, match=f"{url}/train-images-idx3-ubyte.gz: .*timed "
                                                     f"out"):
            data.download("mnist", tmp_path, mirror=url, timeout=0.3)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf"), "5", True])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, timeout):
    with pytest.raises(ValueError, match=r"^download: timeout must be a positive number of "
                                         r"seconds, got"):
        data.download("mnist", tmp_path, timeout=timeout)
    assert os.listdir(tmp_path) == []


def test_the_size_cap_stops_a_download(tmp_path, published, monkeypatch):
    base, _ = published
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 100)
    with pytest.raises(data.DownloadError, match=r"train-images-idx3-ubyte.gz: .*: \d+ bytes, "
                                                 r"more than jaxcnn.data.MAX_IDX_BYTES \(100\)"):
        data.download("mnist", tmp_path, mirror=f"{base}/good/")
    assert os.listdir(tmp_path) == []


def test_bad_names_and_mirrors(tmp_path):
    with pytest.raises(ValueError, match=r"no download for the data set 'digits'; expected one of "
                                         r"mnist, fashion-mnist \(the digits ship with"):
        data.download("digits", tmp_path)
    with pytest.raises(ValueError, match=r"mirror: expected an http:// or https:// URL, got "
                                         r"'file:///srv/mnist'"):
        data.download("mnist", tmp_path / "d", mirror="file:///srv/mnist")
    for mirror, fault in (("http://[::1", r" \(Invalid IPv6 URL\)"),
                          ("http://x:abc/", r" \(Port could not be cast to integer value"),
                          ("http:///mnist", "$")):
        with pytest.raises(ValueError, match=f"^mirror: expected an http:// or https:// URL, "
                                             f"got {re.escape(repr(mirror))}{fault}"):
            data.download("mnist", tmp_path / "d", mirror=mirror)
    assert not (tmp_path / "d").exists()


def test_a_data_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    afile = re.escape(repr(str(tmp_path / "afile")))
    with pytest.raises(ValueError, match=f"^the data directory {afile} is a file, not a "
                                         f"directory; expected a directory for the IDX files"):
        data.download("mnist", tmp_path / "afile")
    with pytest.raises(OSError, match=r"^cannot create the data directory '.*afile/sub' \(Not "
                                      r"a directory\)"):
        data.download("mnist", tmp_path / "afile" / "sub")


# --- the command line ----------------------------------------------------------------------

def test_data_download_command(tmp_path, published, capsys):
    base, md5 = published
    assert cli.main(["data", "download", "mnist", "--data-dir", str(tmp_path / "d"),
                     "--mirror", f"{base}/good"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[0].startswith(f"{FILES[0]}: downloaded from {base}/good/")
    assert out[4] == (f"mnist: the four files are in {tmp_path / 'd'}; train with: jaxcnn train "
                      f"--dataset mnist --data-dir {tmp_path / 'd'}")
    assert cli.main(["data", "download", "mnist", "--data-dir", str(tmp_path / "my data"),
                     "--mirror", f"{base}/good"]) == 0          # a path to paste, quoted
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"--data-dir '{tmp_path / 'my data'}'")

    assert cli.main(["data", "download", "mnist", "--data-dir", str(tmp_path / "e"),
                     "--mirror", f"{base}/corrupt"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jaxcnn data download: error: {FILES[3]}: could not download it")
    assert f"MD5 mismatch: expected {md5[FILES[3]]}, got " in err
    assert cli.main(["data", "download", "mnist", "--mirror", "ftp://x"]) == 2
    assert cli.main(["data", "download", "cifar"]) == 2
    assert "invalid choice: 'cifar'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--mirror", "http://[::1"], "argument --mirror: expected an http:// or https:// URL, got "
                                  "'http://[::1' (Invalid IPv6 URL)"),
    (["--mirror", "ftp://x"], "argument --mirror: expected an http:// or https:// URL, got "
                              "'ftp://x'"),
    (["--mirror", "http://a..b"], "argument --mirror: expected an http:// or https:// URL, got "
                                  "'http://a..b' (its host name: encoding with 'idna' codec "
                                  "failed"),
    (["--timeout", "1e12"], "argument --timeout: must be a number of seconds, above 0 and at "
                            "most 86400 (a day), got '1e12'"),
    (["--data-dir", "{tmp}/afile"], "argument --data-dir: '{tmp}/afile' is a file, not a "
                                    "directory"),
    (["--data-dir", "{tmp}/afile/sub", "--mirror", "http://127.0.0.1:9"],
     "cannot create the data directory '{tmp}/afile/sub' (Not a directory)"),
])
def test_data_download_bad_options_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "afile").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(["data", "download", "mnist", *args]) == 2
    err = capsys.readouterr().err
    assert "jaxcnn data download: error: " in err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert os.listdir(tmp_path) == ["afile"]


def test_train_download_then_trains(tmp_path, published, site, capsys, monkeypatch):
    """The files are fetched, then loaded and handed to ``fit`` (stubbed: training on IDX files
    is test_cli's)."""
    monkeypatch.chdir(tmp_path)
    fitted = []
    monkeypatch.setattr(train, "fit", lambda net, params, *arrays, **kw: fitted.append(arrays))
    args = ["train", "--dataset", "mnist", "--epochs", "1", "--batch-size", "10", "--quiet",
            "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2                                     # no files: say how to get them
    assert ("download them with: jaxcnn data download mnist --data-dir data/mnist (or add "
            "--download to jaxcnn train") in capsys.readouterr().err
    assert cli.main([*args, "--download"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{FILES[0]}: downloaded from ")
    assert "mnist: 40 train + 20 test images, 8x8x1, 10 classes" in out
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(FILES)
    np.testing.assert_array_equal(fitted[0][3], site[2][FILES[3]])     # y_test, as served


def test_train_download_failures_exit_2_before_training(tmp_path, published, capsys,
                                                      monkeypatch):
    base, md5 = published
    monkeypatch.setitem(data.SOURCES, "mnist", data.Source((f"{base}/corrupt/",), md5))
    assert cli.main(["train", "--dataset", "mnist", "--download", "--data-dir",
                     str(tmp_path / "d"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxcnn train: error: {FILES[3]}: could not download it")
    assert not (tmp_path / "o").exists() and FILES[3] not in os.listdir(tmp_path / "d")
    assert cli.main(["train", "--download", "--out", str(tmp_path / "o")]) == 2
    assert "no download for the data set 'digits'" in capsys.readouterr().err
