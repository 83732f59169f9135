"""The CoNLL-U reader: hand-checked sentences (multiword tokens and empty nodes skipped), malformed files
named by file and line, and the real UD English EWT dev set against its README's figures."""
from pathlib import Path

import pytest

from rnnkit.data.store import DataError, DataNotFoundError
from rnnkit.data.treebank import ewt_paths, read_conllu

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ROWS = [  # line 1 is a comment; the first sentence's words start at line 3, the second's at line 10
    "# sent_id = 1",
    "# text = I don't know.",
    "1\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_",
    "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_",
    "2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_",
    "3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_",
    "4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No",
    "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_",
    "",
    "1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t_\t_",
    "2\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t_\t_",
    "3\tcoffee\tcoffee\tNOUN\tNN\t_\t2\tobj\t_\t_",
    "3.1\tlikes\tlike\tVERB\tVBZ\t_\t_\t_\t2:conj\tCopyOf=2",
    "4\tand\tand\tCCONJ\tCC\t_\t5\tcc\t_\t_",
    "5\tBill\tBill\tPROPN\tNNP\t_\t2\tconj\t_\t_",
    "6\ttea\ttea\tNOUN\tNN\t_\t5\tobj\t_\t_",
    "",
]


def write(tmp_path, rows, name="t.conllu"):
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_words_and_tags_without_multiword_ranges_or_empty_nodes(tmp_path):
    path = write(tmp_path, ROWS)
    first, second = read_conllu(path)
    assert first.words == ["I", "do", "n't", "know", "."]
    assert first.tags == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert second.words == ["Sue", "likes", "coffee", "and", "Bill", "tea"]
    assert second.tags == ["PROPN", "VERB", "NOUN", "CCONJ", "PROPN", "NOUN"]
    assert (first.line, second.line) == (3, 10)
    assert [s.tags for s in read_conllu(path, "xpos")] == [["PRP", "VBP", "RB", "VB", "."],
                                                         ["NNP", "VBZ", "NN", "CC", "NNP", "NN"]]


def test_no_final_blank_line_and_crlf_are_read(tmp_path):
    path = tmp_path / "crlf.conllu"
    path.write_bytes("\r\n".join(ROWS[:-1]).encode())
    assert [len(s.words) for s in read_conllu(path)] == [5, 6]


def bad(rows_edit):
    rows = list(ROWS)
    rows_edit(rows)
    return rows


@pytest.mark.parametrize("rows, message", [
    (bad(lambda r: r.__setitem__(4, "2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_")),
     "line 5 has 9 tab-separated columns; CoNLL-U has 10"),
    (bad(lambda r: r.__setitem__(10, "two\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t_\t_")), "line 11: bad ID 'two'"),
    (bad(lambda r: r.__setitem__(2, "0\tI\tI\tPRON\tPRP\t_\t4\tnsubj\t_\t_")), "line 3: bad ID '0'"),
    (bad(lambda r: r.__delitem__(4)), "line 5: word ID 3 out of order; expected 2"),
    (bad(lambda r: r.__setitem__(11, "3\tcoffee\tcoffee\t_\tNN\t_\t2\tobj\t_\t_")),
     "line 12: word 'coffee' has no UPOS tag"),
    (["# only a comment", ""], "holds no sentences"),
])
def test_malformed_files_name_the_file_and_line(tmp_path, rows, message):
    path = write(tmp_path, rows, "bad.conllu")
    with pytest.raises(DataError, match="bad.conllu") as error:
        read_conllu(path)
    assert message in str(error.value)


def test_missing_file_bad_bytes_and_bad_tagset(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.conllu does not exist"):
        read_conllu(tmp_path / "none.conllu")
    (tmp_path / "latin1.conllu").write_bytes(b"# c\n1\tcaf\xe9\t_\tNOUN\tNN\t_\t0\troot\t_\t_\n")
    with pytest.raises(DataError, match=r"latin1.conllu: line 2 is not valid UTF-8 \(byte 0xe9\)"):
        read_conllu(tmp_path / "latin1.conllu")
    with pytest.raises(ValueError, match="tagset must be one of upos, xpos; got 'ner'"):
        read_conllu(write(tmp_path, ROWS), "ner")
    with pytest.raises(DataNotFoundError, match="UD English EWT not found"):
        ewt_paths(tmp_path)


@pytest.mark.skipif(not (DATA / "ud_english_ewt").is_dir(), reason=f"UD English EWT not found in {DATA}")
def test_ewt_dev_matches_the_readme():
    dev = read_conllu(ewt_paths(DATA)["dev"])
    assert len(dev) == 2001 and sum(len(s.words) for s in dev) == 25147 and max(len(s.words) for s in dev) == 75
    assert {t for s in dev for t in s.tags} == set("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT "
                                                   "SCONJ SYM VERB X".split())
