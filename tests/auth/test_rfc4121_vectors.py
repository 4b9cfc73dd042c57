"""
Known answers for the building blocks of the pure RFC 4121 codec
(txsocksgss.wire.rfc4121), every one computed by the project's own code:

- n-fold: RFC 3961 appendix A.1, and the 192-bit folds of MIT krb5's
  src/lib/crypto/crypto_tests/t_nfold.c;
- AES-CTS: RFC 3962 appendix B (key "chicken teriyaki", zero IV);
- string-to-key: RFC 3962 appendix B, as MIT's t_str2key.c lists them
  (PBKDF2-HMAC-SHA1 from hashlib, then our DK(tkey, "kerberos"): the
  vectors check DK and n-fold);
- key derivation (Kc, Ke, Ki of usage 2): MIT's t_derive.c;
- decryption (RFC 3961 s5.3 simplified profile, Ke/Ki of each usage):
  MIT's t_decrypt.c, and the same bytes encrypted again from the
  confounder they reveal;
- checksums (HMAC-SHA1-96 under Kc): MIT's t_cksums.c.

Only the enctypes the codec supports, aes128-cts-hmac-sha1-96 (17) and
aes256-cts-hmac-sha1-96 (18): the aes-sha2 enctypes of RFC 8009 stay
with the library, so their vectors are not here.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txsocksgss.wire.rfc4121 import ENCTYPE_AES128_CTS_HMAC_SHA1_96 as AES128
from txsocksgss.wire.rfc4121 import ENCTYPE_AES256_CTS_HMAC_SHA1_96 as AES256
from txsocksgss.wire.rfc4121 import (
    KEY_LENGTHS,
    TokenRejected,
    UsageKeys,
    checksum,
    cts_decrypt,
    cts_encrypt,
    decrypt,
    derive_key,
    encrypt,
    n_fold,
)

# (input, output bits, n-fold) -- RFC 3961 appendix A.1, then MIT t_nfold.c.
N_FOLD = (
    (b"012345", 64, "be072631276b1955"),
    (b"password", 56, "78a07b6caf85fa"),
    (b"Rough Consensus, and Running Code", 64, "bb6ed30870b7f0e0"),
    (b"password", 168, "59e4a8ca7c0385c3c37b3f6d2000247cb6e6bd5b3e"),
    (b"MASSACHVSETTS INSTITVTE OF TECHNOLOGY", 192, "db3b0d8f0b061e603282b308a50841229ad798fab9540c1b"),
    (b"Q", 168, "518a54a215a8452a518a54a215a8452a518a54a215"),
    (b"ba", 168, "fb25d531ae8974499f52fd92ea9857c4ba24cf297e"),
    (b"kerberos", 64, "6b65726265726f73"),
    (b"kerberos", 128, "6b65726265726f737b9b5b2b93132b93"),
    (b"kerberos", 168, "8372c236344e5f1550cd0747e15d62ca7a5a3bcea4"),
    (b"kerberos", 256, "6b65726265726f737b9b5b2b93132b935c9bdcdad95c9899c4cae4dee6d6cae4"),
    (b"basch", 192, "1aab6b42964b98b21f8cde2d2448ba3455d7862c9731643f"),
    (b"eichin", 192, "65696368696e4b732b4b1b43da1a5b995a58d2c6d0d2dcca"),
    (b"sommerfeld", 192, "2f7a98557c6ee4abadf4e71192dd442bd4ff5325a5def75c"),
)

# (length of the plaintext prefix, ciphertext) -- RFC 3962 appendix B.
CTS_KEY = b"chicken teriyaki"
CTS_TEXT = b"I would like the General Gau's Chicken, please, and wonton soup."
CTS = (
    (17, "c6353568f2bf8cb4d8a580362da7ff7f97"),
    (31, "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5"),
    (32, "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584"),
    (47, "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e39312523a78662d5be7fcbcc98ebf5"),
    (48, "97687268d6ecccc0c07b25e25ecfe5849dad8bbb96c4cdc03bc103e1a194bbd839312523a78662d5be7fcbcc98ebf5a8"),
    (64, "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a8"
         "4807efe836ee89a526730dbc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8"),
)

# (enctype, password, salt, iterations, key) -- RFC 3962 appendix B (MIT t_str2key.c).
STRING_TO_KEY = (
    (AES128, b"password", b"ATHENA.MIT.EDUraeburn", 1, "42263c6e89f4fc28b8df68ee09799f15"),
    (AES256, b"password", b"ATHENA.MIT.EDUraeburn", 1,
     "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161"),
    (AES128, b"password", b"ATHENA.MIT.EDUraeburn", 2, "c651bf29e2300ac27fa469d693bdda13"),
    (AES256, b"password", b"ATHENA.MIT.EDUraeburn", 2,
     "a2e16d16b36069c135d5e9d2e25f896102685618b95914b467c67622225824ff"),
    (AES128, b"password", b"ATHENA.MIT.EDUraeburn", 1200, "4c01cd46d632d01e6dbe230a01ed642a"),
    (AES256, b"password", b"ATHENA.MIT.EDUraeburn", 1200,
     "55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a"),
    (AES128, b"password", bytes.fromhex("1234567878563412"), 5, "e9b23d52273747dd5c35cb55be619d8e"),
    (AES256, b"password", bytes.fromhex("1234567878563412"), 5,
     "97a4e786be20d81a382d5ebc96d5909cabcdadc87ca48f574504159f16c36e31"),
    (AES128, b"X" * 64, b"pass phrase equals block size", 1200, "59d1bb789a828b1aa54ef9c2883f69ed"),
    (AES256, b"X" * 64, b"pass phrase equals block size", 1200,
     "89adee3608db8bc71f1bfbfe459486b05618b70cbae22092534e56c553ba4b34"),
    (AES128, b"X" * 65, b"pass phrase exceeds block size", 1200, "cb8005dc5f90179a7f02104c0018751d"),
    (AES256, b"X" * 65, b"pass phrase exceeds block size", 1200,
     "d78c5c9cb872a8c9dad4697f0bb5b2d21496c82beb2caeda2112fceea057401b"),
    (AES128, "\N{MUSICAL SYMBOL G CLEF}".encode(), b"EXAMPLE.COMpianist", 50, "f149c1f2e154a73452d43e7fe62a56e5"),
    (AES256, "\N{MUSICAL SYMBOL G CLEF}".encode(), b"EXAMPLE.COMpianist", 50,
     "4b6d9839f84406df1f09cc166db4b83c571848b784a3d6bdc346589a3e393f9e"),
)

# (base key, constant, derived key) -- MIT t_derive.c: Kc, Ke, Ki of usage 2.
AES128_BASE = "42263c6e89f4fc28b8df68ee09799f15"
AES256_BASE = "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161"
DERIVE = (
    (AES128_BASE, "0000000299", "34280a382bc92769b2da2f9ef066854b"),
    (AES128_BASE, "00000002aa", "5b14fc4e250e14ddf9dccf1af6674f53"),
    (AES128_BASE, "0000000255", "4ed31063621684f09ae8d89991af3e8f"),
    (AES256_BASE, "0000000299", "bfab388bdcb238e9f9c98d6a878304f04d30c82556375ac507a7a852790f4674"),
    (AES256_BASE, "00000002aa", "c7cfd9cd75fe793a586a542d87e0d1396f1134a104bb1a9190b8c90ada3ddf37"),
    (AES256_BASE, "0000000255", "97151b4c76945063e2eb0529dc067d97d7bba90776d8126d91f34f3101aea8ba"),
)

# (plaintext, usage, key, ciphertext) -- MIT t_decrypt.c.
DECRYPT = (
    (b"", 0, "5a5c0f0ba54f3828b2195e66ca24a289",
     "49ff8e11c173d9583a3254fbe7b1f1df36c538e8416784a1672e6676"),
    (b"1", 1, "98450e3f3baa13f5c99beb936981b06f",
     "f86742f537b35dc2174a4dbaa920faf9042090b065e1ebb1cad9a65394"),
    (b"9 bytesss", 2, "9062430c8cda3388922e6d6a509f5b7a",
     "68fb9679601f45c78857b2bf820fd6e53eca8d42fd4b1d7024a09205abb7cd2ec26c355d2f"),
    (b"13 bytes byte", 3, "033ee6502c54fd23e27791e987983827",
     "ec366d0327a933bf49330e650e49bc6b974637fe80bf532fe51795b4809718e6194724db948d1fd637"),
    (b"30 bytes bytes bytes bytes byt", 4, "dceeb70b3de76562e689226c76429148",
     "c96081032d5d8eeb7e32b4089f789d0faa481dea74c0f97cbf3146ddfcf8e800"
     "156ecb532fc203e30ff600b63b350939fece510f02d7ff1e7bac"),
    (b"", 0, "17f275f2954f2ed1f90c377ba7f4d6a369aa0136e0bf0c927ad6133c693759a9",
     "e5094c55ee7b38262e2b044280b069379a95bf95bd8376fb3281b435"),
    (b"1", 1, "b9477e1ff0329c0050e20ce6c72d2dff27e8fe541ab0954429a9cb5b4f7b1e2a",
     "406150b97aeb76d43b36b62cc1ecdfbe6f40e95755e0beb5c27825f3a4"),
    (b"9 bytesss", 2, "b1ae4cd8462aff1677053cc9279aac30b796fb81ce21474dd3ddbcfea4ec76d7",
     "09957aa25fcaf88f7b39e4406e633012d5fea21853f6478da7065caef41fd454a40824eec5"),
    (b"13 bytes byte", 3, "e5a72be9b7926c1225bafef9c1872e7ba4cdb2b17893d84abd90acdd8764d966",
     "d8f1aafeec84587cc3e700a774e56651a6d693e174ec4473b5e6d96f80297a653fb818ad893e719f96"),
    (b"30 bytes bytes bytes bytes byt", 4, "f1c795e9248a09338d82c3f8d5b567040b0110736845041347235b1404231398",
     "d1137a4d634cfece924dbc3bf6790648bd5cff7de0e7b99460211d0daef3d79a"
     "295c688858f3b34b9cbd6eebae81daf6b734d4d498b6714f1c1d"),
)

# (plaintext, usage, key, checksum) -- MIT t_cksums.c, hmac-sha1-96-aes128 and -aes256.
CHECKSUMS = (
    (b"eight nine ten eleven twelve thirteen", 3, "9062430c8cda3388922e6d6a509f5b7a", "01a4b088d45628f6946614e3"),
    (b"fourteen", 4, "b1ae4cd8462aff1677053cc9279aac30b796fb81ce21474dd3ddbcfea4ec76d7", "e08739e3279e2903ec8e3836"),
)


def string_to_key(enctype: int, password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 3962 s4: DK(random-to-key(PBKDF2-HMAC-SHA1(password, salt, iterations)), "kerberos")."""
    base = hashlib.pbkdf2_hmac("sha1", password, salt, iterations, KEY_LENGTHS[enctype])
    return derive_key(base, b"kerberos")


def aes_cbc(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(bytes(16)))


class NFoldTests(SynchronousTestCase):
    def test_vectors(self):
        for data, bits, expected in N_FOLD:
            self.assertEqual(n_fold(data, bits // 8).hex(), expected, (data, bits))

    def test_refuses_empty_input_and_sizes(self):
        self.assertRaises(ValueError, n_fold, b"", 16)
        self.assertRaises(ValueError, n_fold, b"x", 0)


class CiphertextStealingTests(SynchronousTestCase):
    def test_vectors(self):
        cbc = aes_cbc(CTS_KEY)
        ecb = Cipher(algorithms.AES(CTS_KEY), modes.ECB())
        for length, expected in CTS:
            ciphertext = cts_encrypt(cbc, CTS_TEXT[:length])
            self.assertEqual(ciphertext.hex(), expected, length)
            self.assertEqual(cts_decrypt(cbc, ecb, ciphertext), CTS_TEXT[:length], length)

    @given(st.binary(min_size=16, max_size=300), st.sampled_from([16, 32]))
    @settings(max_examples=200, deadline=None)
    def test_round_trip(self, data, key_size):
        key = bytes(range(key_size))
        ciphertext = cts_encrypt(aes_cbc(key), data)
        self.assertEqual(len(ciphertext), len(data))
        self.assertEqual(cts_decrypt(aes_cbc(key), Cipher(algorithms.AES(key), modes.ECB()), ciphertext), data)

    def test_refuses_less_than_a_block(self):
        self.assertRaises(ValueError, cts_encrypt, aes_cbc(bytes(16)), b"short")
        self.assertRaises(ValueError, cts_decrypt, aes_cbc(bytes(16)), None, b"short")


class KeyDerivationTests(SynchronousTestCase):
    def test_string_to_key_vectors(self):
        for enctype, password, salt, iterations, expected in STRING_TO_KEY:
            self.assertEqual(string_to_key(enctype, password, salt, iterations).hex(), expected,
                             (enctype, password, salt, iterations))

    def test_derivation_vectors(self):
        for base, constant, expected in DERIVE:
            self.assertEqual(derive_key(bytes.fromhex(base), bytes.fromhex(constant)).hex(), expected, constant)

    def test_usage_keys_are_the_derived_ones(self):
        """Kc, Ke and Ki of usage 2, through the class the codec uses."""
        for base in (AES128_BASE, AES256_BASE):
            keys = UsageKeys(bytes.fromhex(base), 2)
            derived = {constant[-2:]: expected for key, constant, expected in DERIVE if key == base}
            self.assertEqual(keys.checksum_key.hex(), derived["99"])
            self.assertEqual(keys.encryption_key.hex(), derived["aa"])
            self.assertEqual(keys.integrity_key.hex(), derived["55"])


class EncryptionTests(SynchronousTestCase):
    def test_decryption_vectors(self):
        for plaintext, usage, key, ciphertext in DECRYPT:
            confounded = decrypt(UsageKeys(bytes.fromhex(key), usage), bytes.fromhex(ciphertext))
            self.assertEqual(confounded[16:], plaintext, (key, usage))

    def test_the_same_confounder_encrypts_to_the_same_ciphertext(self):
        for _, usage, key, ciphertext in DECRYPT:
            keys = UsageKeys(bytes.fromhex(key), usage)
            confounded = decrypt(keys, bytes.fromhex(ciphertext))
            self.assertEqual(b"".join(encrypt(keys, confounded)).hex(), ciphertext, (key, usage))

    def test_a_changed_bit_or_another_usage_does_not_verify(self):
        for _, usage, key, ciphertext in DECRYPT:
            raw = bytes.fromhex(ciphertext)
            for position in (0, len(raw) // 2, len(raw) - 1):
                changed = bytearray(raw)
                changed[position] ^= 0x10
                self.assertRaises(TokenRejected, decrypt, UsageKeys(bytes.fromhex(key), usage), bytes(changed))
            self.assertRaises(TokenRejected, decrypt, UsageKeys(bytes.fromhex(key), usage + 1), raw)

    def test_too_short_a_ciphertext_is_rejected(self):
        keys = UsageKeys(bytes(16), 0)
        for length in (0, 15, 27):
            self.assertRaises(TokenRejected, decrypt, keys, bytes(length))


class ChecksumTests(SynchronousTestCase):
    def test_vectors(self):
        for plaintext, usage, key, expected in CHECKSUMS:
            self.assertEqual(checksum(UsageKeys(bytes.fromhex(key), usage), plaintext).hex(), expected, usage)

    def test_pieces_are_checksummed_as_one_message(self):
        plaintext, usage, key, expected = CHECKSUMS[0]
        keys = UsageKeys(bytes.fromhex(key), usage)
        self.assertEqual(checksum(keys, plaintext[:5], memoryview(plaintext)[5:]).hex(), expected)
