"""How journal rows read in `memory log`."""

from memchat.service.stats import readable


def test_chat_turns_read_as_who_said_what():
    turn = ("<|start_header_id|>user<|end_header_id|>\n\nMy dog is Biscuit.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nNoted!<|eot_id|>")
    assert readable(turn) == "user: My dog is Biscuit. assistant: Noted!"


def test_other_text_only_loses_its_extra_whitespace():
    assert readable("a  [b]\n\n<c> | d") == "a [b] <c> | d"
