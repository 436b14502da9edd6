"""The 256 words of pairing codes (``ftx receive --code``): short, common, easy to say.

A code is ``<number>-<word>-<word>``, e.g. ``7-olive-tiger``: a number from 1 to
999 and two words from this list, drawn with ``secrets``.  That is
log2(999 * 256 * 256) = 25.96 bits.  The code is never used as a key: SPAKE2
(ftx/core/secure/pake.py) turns it into one, so a recorded handshake gives an
attacker nothing to guess offline; each guess costs a live connection, and the
receiver burns a code after 3 wrong ones.  All words are lowercase ASCII letters,
distinct, and none is a number.
"""

from __future__ import annotations

WORDS = (
    "acid", "area", "army", "atom", "aunt", "baby", "back", "bake", "ball", "band", "bank", "barn", "base",
    "bath", "bead", "beam", "bean", "bear", "beef", "bell", "belt", "bench", "berry", "bike", "bird", "blue",
    "boat", "body", "bold", "bone", "book", "boot", "bowl", "box", "brave", "bread", "brick", "brook",
    "brush", "cake", "calm", "camp", "card", "cart", "cash", "cave", "chain", "chair", "chalk", "chef",
    "chess", "chin", "city", "clay", "cliff", "clock", "cloud", "coal", "coat", "code", "coin", "cold",
    "cook", "cool", "copper", "corn", "cow", "crab", "crow", "cube", "cup", "curl", "dance", "dawn", "deer",
    "desk", "dial", "dish", "dock", "doll", "door", "dove", "dream", "drum", "duck", "dune", "dust", "eagle",
    "earth", "echo", "edge", "egg", "elbow", "elk", "ember", "fair", "farm", "fern", "field", "fig", "film",
    "fish", "flag", "flame", "flute", "foam", "fog", "fork", "fox", "frog", "fruit", "game", "gate", "gift",
    "glass", "glove", "goat", "gold", "grape", "grass", "gulf", "hall", "hand", "harp", "hat", "hawk",
    "heart", "hill", "honey", "hook", "horn", "horse", "house", "ice", "ink", "iron", "island", "jam", "jar",
    "jazz", "jelly", "joke", "juice", "kettle", "key", "kite", "knee", "knot", "lake", "lamp", "leaf",
    "lemon", "lily", "lime", "lion", "lock", "loft", "mango", "maple", "mask", "meadow", "melon", "milk",
    "mint", "moon", "moss", "moth", "mouse", "music", "nail", "nest", "net", "noon", "north", "nut", "oak",
    "ocean", "olive", "onion", "orbit", "otter", "owl", "palm", "panda", "paper", "park", "pear", "pearl",
    "pen", "pepper", "piano", "pig", "pine", "plum", "pond", "pony", "quilt", "rabbit", "rain", "raven",
    "reef", "rice", "ring", "river", "road", "robin", "rock", "roof", "rope", "rose", "ruby", "sail", "salt",
    "sand", "scarf", "seal", "seed", "shell", "ship", "silk", "silver", "sky", "snow", "sock", "sofa", "soup",
    "spoon", "star", "stone", "storm", "sugar", "sun", "swan", "table", "tea", "tiger", "tent", "toast",
    "tomato", "tooth", "tower", "train", "tree", "tulip", "van", "vase", "violin", "wagon", "wave", "whale",
    "wheat", "wind", "wolf", "wool", "yard", "zebra",
)

assert len(WORDS) == 256 and len(set(WORDS)) == 256
INDEX = {w: i for i, w in enumerate(WORDS)}
MAX_NUMBER = 999
