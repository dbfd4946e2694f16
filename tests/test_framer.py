"""The framer and the JSON parser: bytes in, messages and qemu's errors out."""
import json
import sys
import unittest

from tests.support import qga_mini

Framer, QgaError = qga_mini.Framer, qga_mini.QgaError


def run(*chunks):
    """Feed chunks to one framer; messages parsed, errors as their text."""
    framer, out = Framer(), []
    for chunk in chunks:
        for event in framer.feed(chunk):
            if isinstance(event, QgaError):
                out.append(event.desc)
            elif isinstance(event, dict):
                out.append(event)           # a whole request in one read, parsed already
            else:
                try:
                    out.append(qga_mini.parse_message(*event))
                except qga_mini.JsonError as exc:
                    out.append("JSON parse error, %s" % exc)
    return out


PING = b'{"execute": "guest-ping"}'


class Framing(unittest.TestCase):
    def test_one_message_per_value_regardless_of_newlines(self):
        self.assertEqual(run(PING + PING + b"\n" + PING), [{"execute": "guest-ping"}] * 3)

    def test_split_byte_by_byte(self):
        data = b'{"execute":"guest-sync","arguments":{"id":123},"id":"a\\"}"}'
        self.assertEqual(run(*[data[i:i + 1] for i in range(len(data))]), run(data))
        self.assertEqual(run(data)[0]["arguments"]["id"], 123)

    def test_whitespace_only_gives_nothing(self):
        self.assertEqual(run(b"\r\n\t  \n", b"\n"), [])

    def test_number_or_keyword_waits_for_the_next_byte(self):
        framer = Framer()
        self.assertEqual(framer.feed(b"42"), [])
        self.assertEqual(len(framer.feed(b"\n")), 1)
        self.assertEqual(run(b"tr", b"ue", b" "), [True])

    def test_keyword_over_reads_is_joined(self):
        self.assertEqual(run(b"true", b"null", b"foo", b" "),
                         ["JSON parse error, invalid keyword 'truenullfoo'"])

    def test_braces_inside_strings_do_not_count(self):
        self.assertEqual(run(b'{"a": "}{][", \'b\': \'}"\'}'), [{"a": "}{][", "b": '}"'}])

    def test_escaped_quote_split_across_reads(self):
        self.assertEqual(run(b'{"a": "x\\', b'"y"}'), [{"a": 'x"y'}])


class Resync(unittest.TestCase):
    STRAY_FF = "JSON parse error, stray '\ufffd'"

    def test_ff_discards_partial_message_and_is_reported(self):
        self.assertEqual(run(b'{"execute":', b"\xff" + PING),
                         [self.STRAY_FF, {"execute": "guest-ping"}])

    def test_every_ff_is_one_error(self):
        self.assertEqual(run(b"\xff\xff"), [self.STRAY_FF] * 2)

    def test_fe_resets_too(self):
        self.assertEqual(run(b'{"a": [1, \xfe' + PING)[-1], {"execute": "guest-ping"})

    def test_ff_inside_a_string_quotes_the_partial_token(self):
        self.assertEqual(run(b'{"execute":"guest-pi\xff"}'),
                         ["JSON parse error, stray '\"guest-pi\ufffd'",
                          "JSON parse error, expecting value"])

    def test_ff_at_every_position_never_wedges(self):
        for i in range(len(PING) + 1):
            out = run(PING[:i] + b"\xff" + PING)
            self.assertEqual(out[-1], {"execute": "guest-ping"}, i)

    def test_a_number_or_keyword_before_ff_ends_first(self):
        # qemu's lexer ends a whole number or keyword at any byte that cannot continue it, the
        # 0xFF too (which may complete a message), then reports the 0xFF alone; an incomplete
        # number is quoted with the 0xFF, a digit after a leading zero is an error of its own.
        cases = {b"1\xff": [1, self.STRAY_FF],
                 b"tru\xff": ["JSON parse error, invalid keyword 'tru'", self.STRAY_FF],
                 b'{"a":1.5e3\xfe': [self.STRAY_FF],
                 b"1-\xff": [1, "JSON parse error, stray '-\ufffd'"],
                 b"01\xff": ["JSON parse error, stray '01'", self.STRAY_FF],
                 b"-\xff": ["JSON parse error, stray '-\ufffd'"],
                 b"1.\xff": ["JSON parse error, stray '1.\ufffd'"],
                 b"1e+\xfe": ["JSON parse error, stray '1e+\ufffd'"]}
        for data, events in cases.items():
            for i in range(len(data)):          # however the reads split it
                self.assertEqual(run(data[:i], data[i:] + PING), events + [
                    {"execute": "guest-ping"}], (data, i))

    def test_newline_does_not_discard_a_partial_message(self):
        self.assertEqual(run(b'{"execute":\n', b'"guest-ping"}'), [{"execute": "guest-ping"}])


class LexerErrors(unittest.TestCase):
    def test_stray_bytes(self):
        self.assertEqual(run(b"X" + PING), ["JSON parse error, stray 'X'",
                                            {"execute": "guest-ping"}])
        self.assertEqual(run(b'{"a":TRUE}'), ["JSON parse error, stray 'T'",
                                              "JSON parse error, expecting value"])

    def test_bad_numbers(self):
        self.assertEqual(run(b'{"a":01}'), ["JSON parse error, stray '01'",
                                            "JSON parse error, expecting value"])
        self.assertEqual(run(b'{"a":1.}'), ["JSON parse error, stray '1.}'"])
        self.assertEqual(run(b'{"a":-}'), ["JSON parse error, stray '-}'"])
        self.assertEqual(run(b'[1.5.3]')[0], "JSON parse error, stray '.'")

    def test_raw_control_byte_in_string(self):
        self.assertEqual(run(b'{"a":"a\tb"}')[0], "JSON parse error, stray '\"a\t'")

    def test_nul_ends_the_quoted_token(self):
        self.assertEqual(run(b'\x00 ')[0], "JSON parse error, stray ''")

    def test_quoted_bytes_show_one_replacement_per_bad_sequence(self):
        # As qemu's reply encoder reads them: a sequence cut short, overlong, a surrogate, a
        # noncharacter or past U+10FFFF is one U+FFFD; C0 80 is a NUL.
        shown = qga_mini.qemu_shown_text
        self.assertEqual(shown(b'"\xed\xa0\x80\xc1\x81\xe2\x82a\xf5\x80\x80\x80\xc0\x80b\xff'),
                         '"\ufffd\ufffd\ufffda\ufffd\x00b\ufffd')
        self.assertEqual(shown(b"\xef\xbf\xbf\xf8\x88\x80\x80\x80\xfc\x84\x80\x80\x80\x80x\xfe"),
                         "\ufffd\ufffd\ufffdx\ufffd")
        self.assertEqual(shown(b"\xc3\xa9\xf0\x9f\x98\x80\xf0\x9f\x98\x00\xc3"),
                         "\xe9\U0001f600\ufffd")
        self.assertEqual(run(b'"a\xc3\xff'), ["JSON parse error, stray '\"a\ufffd\ufffd'"])

    def test_recovery_skips_to_a_structural_byte(self):
        self.assertEqual(run(b'{"execute":"guest-ping"X}' + PING),
                         ["JSON parse error, stray 'X'", "JSON parse error, expecting value",
                          {"execute": "guest-ping"}])


class ParseErrors(unittest.TestCase):
    CASES = [
        (b'{"a":1,}', "expecting value"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"a" 1}', "missing : in object pair"),
        (b'{"a":1 "b":2}', "expected separator in dict"),
        (b'[1 2]', "expected separator in list"),
        (b'{1:2}', "key is not a string in object"),
        (b'{"a":nul}', "invalid keyword 'nul'"),
        (b'{"a":"\\x"}', "invalid escape sequence in string"),
        (b'{"a":"\\ud800"}', "\\ud800 is not a valid Unicode character"),
        (b'{"a":"\\uzzzz"}', "\\uzzzz is not a valid Unicode character"),
        (b'{"a":"\xc3"}', "invalid UTF-8 sequence in string"),
        (b'{"a":"\xed\xa0\x80"}', "invalid UTF-8 sequence in string"),
        (b'{]', "expecting value"),
        (b']', "expecting value"),
        (b'{"a":[1,2,]}', "expecting value"),
        (b'{"a":"\\ufffe"}', "\\ufffe is not a valid Unicode character"),
        (b'{"a":"\\uFDEF"}', "\\uFDEF is not a valid Unicode character"),
        (b'{"a":"\\ud83f\\udfff"}', "\\ud83f\\udfff is not a valid Unicode character"),
        (b'{"a":"\xef\xbf\xbf"}', "invalid UTF-8 sequence in string"),
        (b'{"a":"\xef\xb7\x90"}', "invalid UTF-8 sequence in string"),
        (b'{"a":"\xf3\xbf\xbf\xbe"}', "invalid UTF-8 sequence in string"),
        # The first error from the left wins; \u takes four bytes, the closing quote too.
        (b'{"a":"\\x\xc3"}', "invalid escape sequence in string"),
        (b'{"a":"\xc3\\x"}', "invalid UTF-8 sequence in string"),
        (b'{"a":"\\ufffe\xef\xbf\xbe"}', "\\ufffe is not a valid Unicode character"),
        (b'{"a":"\\u00\xc3"}', '\\u00\ufffd" is not a valid Unicode character'),
        (b'{"a":"\\ud83d\\ude0"}', "\\ud83d is not a valid Unicode character"),
    ]

    def test_texts(self):
        for data, text in self.CASES:
            self.assertEqual(run(data), ["JSON parse error, " + text], data)

    def test_characters_next_to_the_noncharacters_are_fine(self):
        self.assertEqual(run(b'{"a": "\\ufdcf\\ufdf0\\ufffd\xf3\xbf\xbf\xbd\\ud83f\\udffd"}'),
                         [{"a": "\ufdcf\ufdf0\ufffd\U000FFFFD\U0001FFFD"}])

    def test_qemu_extensions(self):
        self.assertEqual(run(b"{'a': 'x\"y\\''}"), [{"a": "x\"y'"}])
        self.assertEqual(run(b'{"a": "\\\'"}'), [{"a": "'"}])
        self.assertEqual(run(b'{"a": "\xc0\x80"}'), [{"a": "\x00"}])
        self.assertEqual(run(b'{"a": "\\ud83d\\ude00\\u00e9"}'), [{"a": "\U0001F600\u00e9"}])

    def test_integer_ranges(self):
        self.assertEqual(run(b'[18446744073709551615, -9223372036854775808, '
                             b'18446744073709551616]'),
                         [[18446744073709551615, -9223372036854775808, 1.8446744073709552e19]])

    def test_slow_parser_agrees_with_json_on_valid_input(self):
        samples = [b'{"a": [1, 2.5, {"b": null}], "c": "\\u00e9\\n", "d": true, "e": false}',
                   b'[[], {}, "", -0, 1e3, -1.5E-7]']
        for raw in samples:
            self.assertEqual(qga_mini.parse_json_qemu(raw), json.loads(raw.decode()))


class Limits(unittest.TestCase):
    def nested(self, depth):
        return b'{"execute":"guest-ping","id":' + b"[" * depth + b"]" * depth + b"}"

    def test_nesting_1024_is_fine_1025_is_not(self):
        self.assertIsInstance(run(self.nested(1023))[0], dict)
        self.assertEqual(run(self.nested(1024) + PING),
                         ["JSON nesting depth limit exceeded", {"execute": "guest-ping"}])

    def test_token_count(self):
        big = b"[" + b"1," * (2 << 20) + b"1]"
        self.assertEqual(run(big, PING),
                         ["JSON token count limit exceeded", {"execute": "guest-ping"}])

    def test_token_count_of_an_object_read_whole(self):
        big = b'{"a":[' + b"1," * (2 << 20) + b"1]}"
        self.assertEqual(run(big + PING),
                         ["JSON token count limit exceeded", {"execute": "guest-ping"}])

    def test_size_limit_then_clean_recovery(self):
        body = b"A" * (64 << 20)
        chunks = [b'{"execute":"guest-ping","arguments":{"x":"']
        chunks += [body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
        chunks += [b'"}}', PING]
        self.assertEqual(run(*chunks),
                         ["JSON token size limit exceeded", {"execute": "guest-ping"}])

    def test_framer_keeps_no_memory_of_a_discarded_message(self):
        framer = Framer()
        framer.feed(b'{"x":"' + b"A" * ((64 << 20) + 10))
        framer.feed(b"A" * (1 << 20))
        self.assertLess(len(framer.buf), 1 << 16)

    def test_just_under_the_limit_is_a_message(self):
        body = b"A" * ((64 << 20) - 100)
        out = run(b'{"execute":"guest-ping","arguments":{"x":"', body, b'"}}')
        self.assertEqual(len(out[0]["arguments"]["x"]), len(body))


class Encoder(unittest.TestCase):
    def line(self, reply):
        return b"".join(qga_mini.encode_reply(reply))

    def test_compact_ascii_with_qemu_escapes(self):
        self.assertEqual(self.line({"return": {}, "id": "\u00e9\U0001F600\x7f\\u00ab"}),
                         b'{"return": {}, "id": "\\u00E9\\uD83D\\uDE00\\u007F\\\\u00ab"}\n')

    def test_an_error_without_id_is_the_same_line_made_directly(self):
        for desc in ("JSON parse error, stray '\ufffd'", "\u00e9\U0001F600\x7f\\u00ab\x00\"'"):
            error = QgaError(desc)
            reply = {"error": {"class": error.cls, "desc": desc}}
            self.assertEqual(qga_mini.encode_error(error), qga_mini.encode_reply(reply))
            self.assertEqual(qga_mini.encode_error(error, {"id": [1.5]}),
                             qga_mini.encode_reply(dict(id=[1.5], **reply)))

    def test_doubles_print_as_qemu_prints_them(self):
        self.assertEqual(self.line({"return": [0.1, 1e5, float("inf"), 1.5]}),
                         b'{"return": [0.10000000000000001, 100000, inf, 1.5]}\n')

    def test_doubles_are_found_however_strings_look(self):
        # Strings that look like numbers, escaped quotes and backslashes: never a double.
        for value in ["1.5", 'a"1.5"', "\\", '\\"', "x\\\"1e5\"", "Infinity", "NaN",
                      {"1.5": "2e3"}, ["t\"rue", 1, True, None, False, -7]]:
            self.assertEqual(self.line({"return": value, "id": "\\\"."}),
                             json.dumps({"return": value, "id": "\\\"."}).encode() + b"\n")
        # A double anywhere is printed as qemu prints it.
        for value, text in [(1e16, b"10000000000000000"), (-0.0, b"-0"), (2.5, b"2.5"),
                            (float("-inf"), b"-inf"), (1e-7, b"9.9999999999999995e-08")]:
            self.assertEqual(self.line({"return": {"s": 'x"\\', "v": [value]}}),
                             b'{"return": {"s": "x\\"\\\\", "v": [' + text + b"]}}\n")

    def test_integer_replies_are_printed_directly(self):
        self.assertEqual(self.line({"return": 5}), b'{"return": 5}\n')
        self.assertEqual(self.line({"return": -(1 << 63), "id": (1 << 64) - 1}),
                         b'{"return": -9223372036854775808, "id": 18446744073709551615}\n')
        self.assertEqual(self.line({"return": 5, "id": 1.0}), b'{"return": 5, "id": 1}\n')
        self.assertEqual(self.line({"return": True, "id": False}),
                         b'{"return": true, "id": false}\n')
        self.assertEqual(self.line({"id": 2, "return": 5}), b'{"id": 2, "return": 5}\n')

    def test_bytes_payload_is_spliced(self):
        chunks = qga_mini.encode_reply({"return": {"count": 3, "buf-b64": b"YWJj", "eof": True}})
        self.assertEqual(json.loads(b"".join(chunks)),
                         {"return": {"count": 3, "buf-b64": "YWJj", "eof": True}})
        self.assertTrue(any(c == b"YWJj" for c in chunks))



class Numbers(unittest.TestCase):
    """Integer tokens as qemu's parser reads them: int64, else uint64, else strtod()."""

    CASES = [
        (b"9223372036854775807", (1 << 63) - 1), (b"9223372036854775808", 1 << 63),
        (b"18446744073709551615", (1 << 64) - 1), (b"18446744073709551616", float(1 << 64)),
        (b"-9223372036854775808", -(1 << 63)), (b"-9223372036854775809", -float(1 << 63)),
        (b"-0", 0), (b"-0.0", -0.0), (b"1e308", 1e308), (b"1e309", float("inf")),
        (b"-1e309", float("-inf")), (b"9" * 5000, float("inf")), (b"-" + b"9" * 5000,
                                                                 float("-inf")),
        (b"1" + b"0" * 300, 1e300), (b"12345678901234567890123", 1.2345678901234568e22),
    ]

    def parsed(self, token):
        """The number as the json path, the exact parser and the framer each read it."""
        message = b'{"n": ' + token + b"}"
        values = [qga_mini.parse_message(message)["n"],
                  qga_mini.parse_json_qemu(message)["n"],
                  qga_mini.parse_message(b"{'n': " + token + b"}", True)["n"],
                  run(message + message)[1]["n"]]
        for value in values[1:]:
            self.assertEqual((type(value), repr(value)), (type(values[0]), repr(values[0])),
                             token[:40])
        return values[0]

    def test_every_path_reads_qemus_value(self):
        for token, expected in self.CASES:
            value = self.parsed(token)
            self.assertEqual((type(value), repr(value)), (type(expected), repr(expected)),
                             token[:40])

    def test_no_digit_limit_is_ever_hit(self):
        # 3.11+ refuses int() of more than sys.get_int_max_str_digits() digits: a token that
        # long must never reach int(), whatever the limit is set to.
        setter = getattr(sys, "set_int_max_str_digits", None)
        if setter is None:
            self.skipTest("this Python has no integer digit limit")
        old = sys.get_int_max_str_digits()
        self.addCleanup(setter, old)
        setter(640)
        for digits in (641, 4301, 100000):
            self.assertEqual(self.parsed(b"7" * digits), float("inf"))
        self.assertEqual(self.parsed(b"7" * 300), float("7" * 300))


class ManyMessagesPerRead(unittest.TestCase):
    """Whole objects at a message boundary are read by the json module, with no token walk;
    the walk takes over where json cannot vouch for the bytes, with the same events."""

    def walked(self, *chunks):
        """(events, how many tokens the walk went through) for chunks fed to one framer."""
        framer, tokens = Framer(), []
        token_done = framer._token_done

        def counting_token_done(events):
            tokens.append(framer.pos)
            token_done(events)
        framer._token_done = counting_token_done
        events = []
        for chunk in chunks:
            events += framer.feed(chunk)
        events = [e if isinstance(e, dict) else qga_mini.parse_message(*e) for e in events]
        return events, len(tokens)

    def test_a_read_of_whole_requests_is_never_walked(self):
        data = b"".join(b'{"execute":"guest-sync","arguments":{"id":%d}}\n' % i
                        for i in range(5000))
        events, tokens = self.walked(data)
        self.assertEqual(tokens, 0)
        self.assertEqual([e["arguments"]["id"] for e in events], list(range(5000)))

    def test_a_partial_request_is_walked_only_to_its_end(self):
        one = b'{"execute":"guest-sync","arguments":{"id":1234567}}'     # 13 tokens
        data = one * 300
        cut = len(data) // 2 + 7
        events, tokens = self.walked(data[:cut], data[cut:])
        self.assertEqual([e["arguments"]["id"] for e in events], [1234567] * 300)
        self.assertEqual(tokens, 13)

    def test_every_fallback_gives_the_events_of_the_exact_framer(self):
        # As deep as the agent lets the json module go (it raises the recursion limit).
        self.addCleanup(sys.setrecursionlimit, sys.getrecursionlimit())
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * qga_mini.MAX_NESTING))
        ping = b'{"execute":"guest-ping"}'
        middles = [b"\xff", b"\xfe", b"{'execute':'guest-ping'}", b'{"a":01}', b"]", b"[1]",
                   b'"x"', b"42 ", b"nul", b'{"a":"\\ufffe"}', b'{"a":"\xef\xbf\xbe"}',
                   b'{"a":"\\ud83d\\ude00"}', b'{"a":"\xc3\xa9"}', b'{"a":"\xc3"}',
                   b'{"a":"\xc0\x80"}', b'{"a":1,"a":2}', b'{"a":NaN}',
                   b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}",
                   b'{"a":' + b"[" * 500 + b"]" * 500 + b',"b":' + b"[" * 600 + b"]" * 600 + b"}",
                   b"\x00", b'{"a":"\t"}']
        for middle in middles:
            data = ping + b"\n" + middle + ping + b' {"execute":"guest-ping","id":"\xc3\xa9"}'
            exact = run(*[data[i:i + 1] for i in range(len(data))])
            self.assertEqual(run(data), exact, middle)
            for cut in range(1, len(data), 7):
                self.assertEqual(run(data[:cut], data[cut:]), exact, (middle, cut))

    def test_a_character_split_between_reads(self):
        data = b'{"execute":"guest-ping","id":"\xc3\xa9"}' * 3
        for cut in range(len(data)):
            self.assertEqual(run(data[:cut], data[cut:]),
                             [{"execute": "guest-ping", "id": "\u00e9"}] * 3, cut)
        data = PING + b"\xc3\xa9" + PING + b"\xc3"
        exact = run(*[data[i:i + 1] for i in range(len(data))])
        self.assertEqual(exact[1], "JSON parse error, stray '\ufffd'")
        for cut in range(len(data)):
            self.assertEqual(run(data[:cut], data[cut:]), exact, cut)


class JsonModuleDiffers(unittest.TestCase):
    """json_module_differs() finds what the regular expression finds, where it finds it."""

    SAMPLES = [b"", b'{"a": "plain"}', b'"\\ud800"', b'"x\\uDBFF"', b'"\\ufdd0"', b'"\\uFFFE"',
               b'"\\u00e9 \\ud83d"', b'"\xef\xb7\x90"', b'"\xef\xbf\xbe"', b'"\xef\xbb\xbf"',
               b'"\xf0\x9f\xbf\xbf"', b'"\xf0\x9f\x98\x80"', b'"\xf4\x8f\xbf\xbe" \\ud800',
               b'"\xc3\xa9"', b"\\u", b"\xef", b"A" * 100000 + b"\\udc00"]

    def test_same_place_as_the_regular_expression(self):
        for sample in self.SAMPLES:
            for start in range(0, min(len(sample), 12) + 1):
                match = qga_mini._JSON_MODULE_DIFFERS.search(sample, start)
                self.assertEqual(qga_mini.json_module_differs(sample, start),
                                 match.start() if match else -1, (sample[:40], start))


class FramerFailure(unittest.TestCase):
    def test_a_failing_framer_starts_afresh_and_says_so(self):
        framer = Framer()
        self.assertEqual(len(framer.feed(b'{"execute":"guest-sync","arguments":')), 0)
        framer._scan = None                                         # calling it raises
        events = framer.feed(b'{"id":1}}' + PING)
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], TypeError)
        del framer._scan
        self.assertEqual(framer.feed(PING), [{"execute": "guest-ping"}])


if __name__ == "__main__":
    unittest.main()
