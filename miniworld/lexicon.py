"""The world's bilingual vocabulary: every entity has an English and a Japanese surface form."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    en: str          # English (singular for nouns)
    ja: str
    en_plural: str = ""

    @property
    def plural(self) -> str:
        return self.en_plural or self.en + "s"

    def en_count(self, n: int) -> str:
        """'apples' / 'apple' for n."""
        return self.en if n == 1 else self.plural

    def en_n(self, n: int) -> str:
        """'3 apples' / '1 apple'."""
        return f"{n} {self.en_count(n)}"


def _w(en, ja, pl=""):
    return Word(en, ja, pl)


PEOPLE = [_w(*p) for p in [
    ("Ken", "ケン"), ("Yuki", "ユキ"), ("Taro", "タロウ"), ("Hana", "ハナ"), ("Mei", "メイ"),
    ("Sora", "ソラ"), ("Riku", "リク"), ("Aoi", "アオイ"), ("Tom", "トム"), ("Anna", "アンナ"),
    ("Ben", "ベン"), ("Lisa", "リサ"), ("Emi", "エミ"), ("Kenji", "ケンジ"), ("Mika", "ミカ"),
    ("Jun", "ジュン"), ("Sara", "サラ"), ("Leo", "レオ"), ("Nana", "ナナ"), ("Kai", "カイ"),
]]

#: countable things people own, buy, give away (counter 個/本/枚... folded into 個 for simplicity)
THINGS = [_w(*t) for t in [
    ("apple", "りんご"), ("pen", "ペン"), ("book", "本"), ("cup", "カップ"), ("egg", "卵"),
    ("flower", "花"), ("card", "カード"), ("coin", "コイン"), ("onigiri", "おにぎり", "onigiri"),
    ("fan", "扇子"), ("kite", "凧"), ("doll", "人形"), ("orange", "みかん"), ("stamp", "切手"),
    ("candle", "ろうそく"), ("box", "箱", "boxes"), ("ball", "ボール"), ("cake", "ケーキ"),
    ("bowl", "お椀"), ("ticket", "切符"),
]]

PLACES = [_w(*p) for p in [
    ("Kyoto", "京都"), ("Tokyo", "東京"), ("Osaka", "大阪"), ("Nara", "奈良"), ("the shrine", "神社"),
    ("the temple", "お寺"), ("the park", "公園"), ("the station", "駅"), ("the market", "市場"),
    ("the school", "学校"), ("the river", "川"), ("the sea", "海"),
]]

COLORS = [_w(*c) for c in [
    ("red", "赤"), ("blue", "青"), ("white", "白"), ("green", "緑"), ("yellow", "黄色"),
    ("black", "黒"), ("pink", "ピンク"), ("orange", "オレンジ"),
]]

#: Japanese cultural items: drawn in the VLM's images and talked about in the text corpus
CULTURE = [_w(*c) for c in [
    ("torii gate", "鳥居"), ("Mt. Fuji", "富士山", "Mt. Fuji"), ("sushi", "寿司", "sushi"),
    ("kimono", "着物", "kimonos"), ("lantern", "提灯"), ("pagoda", "五重塔"),
    ("cherry tree", "桜の木"), ("koi", "鯉", "koi"), ("daruma", "だるま"), ("bento", "弁当", "bentos"),
]]

#: one short bilingual fact per cultural item (used in the base corpus and the VQA answers)
CULTURE_FACTS = {
    "torii gate": ("A torii gate stands at the entrance of a shrine.", "鳥居は神社の入り口に立っています。"),
    "Mt. Fuji": ("Mt. Fuji is the highest mountain in Japan.", "富士山は日本で一番高い山です。"),
    "sushi": ("Sushi is rice with fish on top.", "寿司はご飯の上に魚がのっています。"),
    "kimono": ("A kimono is a traditional Japanese robe.", "着物は日本の伝統的な服です。"),
    "lantern": ("A lantern gives light at night.", "提灯は夜に明かりをともします。"),
    "pagoda": ("A pagoda is a tall tower at a temple.", "五重塔はお寺の高い塔です。"),
    "cherry tree": ("A cherry tree blooms in spring.", "桜の木は春に花が咲きます。"),
    "koi": ("Koi are colorful fish in a pond.", "鯉は池にいる色とりどりの魚です。"),
    "daruma": ("A daruma is a round red doll for good luck.", "だるまは幸運を願う丸い赤い人形です。"),
    "bento": ("A bento is a boxed lunch.", "弁当は箱に入った昼ご飯です。"),
}
