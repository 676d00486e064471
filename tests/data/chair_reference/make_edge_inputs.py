"""Hand-written edge-case captions for the CHAIR reference fixture (+ seeded random combinations of fragments)."""
import json
import random

HAND = [
    "", "   ", "\n\n", "A dog.", "a dog", "Two men are standing near vases.", "A man skateboarding down the street.",
    "A woman seated on a bench with her shoes tied.", "The toilet seat is up.",
    "A toilet with the seat up next to a sink and a cup.", "The seat of the toilet is next to a chair and a bottle.",
    "A baby elephant next to a hot dog stand and a motor bike.", "There are several people, including children.",
    "A sign that says \u201cstop\u201d near a car.", "The man\u2019s dog is on the couch.", "A \u00abcat\u00bb sits.",
    "A dog\u2014brown and white\u2014sits on a bed.", "a cat \u2013 sleeping on a laptop.", "A bus... and a car.",
    "A plate of food . . . with a fork.", "Mr. Smith rides a bike to the U.S. Post Office.",
    "There is a cup, e.g. a mug, on the table.", "St. Louis has a train station.", "Approx. 3 people wait.",
    "At 10 a.m. the bus arrives. Then a truck.", "It is 3.5 inches long and has 2,000 people around it.",
    "A photo from the 1990s shows a tv.", "At 10:30 a clock shows the time.", "The dog's bowl is empty.",
    "A photo from the '90s of a cat.", "The people's umbrellas are open.", "You can't see the knife.",
    "He cannot find the remote. She's gonna get the phone.", "They wanna go skiing.", "'Tis a kite.",
    "A \"hot dog\" stand.", "He said ''hello'' to the horse.", "``Quoted'' text about a sheep.",
    "A cat (sleeping) on a [red] couch {blue} <b>bold</b>.", "A man in a t-shirt eats a hot-dog.",
    "A double-decker bus and a well-known zebra.", "Multiple   spaces\tand\ttabs near a giraffe.",
    "Line one about a cow.\nLine two about a bird.\n\nLine three about a boat.",
    "  Leading and trailing whitespace with a surfboard.  ", "A caf\u00e9 with na\u00efve cr\u00e8me br\u00fbl\u00e9e and a cake.",
    "A puppy \U0001f436 next to a donut \U0001f369.", "\u4e00\u53ea\u732b and a dog.", "Is this a dog? Yes! It is.",
    "What?! A bear?! Really...", "No period at the end with a bicycle", "Two periods.. and a frisbee",
    "e.g., a dog; i.e. the cat; etc. and a vs. b.", "Price: $5 @ 50% off & more * stars # tags.",
    "In 1999 a bus; a 4-way stop; a 2-year-old child.", "She wears glasses and sees buses and knives.",
    "Skis, people, women, children, mice, geese, oxen, teeth, feet, leaves and scissors.",
    "Dishes, boxes, benches, sandwiches, dice, donuts, doughnuts and cacti.",
    "People skiing, surfing, snowboarding, kiting and biking.", "Cupped hands, boxed toys, benched players.",
    "He ties his tie, plates the food, forks the hay and goes bowling and toasting.",
    "A bigger and oranger apple.", "A motor bike and a motor cycle and wine glasses and a wine glass.",
    "A passenger train, a passenger jet, a baby bird and an adult cub.",
    "A bow tie, traffic lights, fire hydrants and stop signs.", "Teddy bears, a hair drier and cell phones.",
    "Tennis rackets, baseball bats, the home plate and train tracks.", "A stove top oven and a potted plant.",
    "Two vases, three vase, a flower vase.", "Men and women and a man and a woman.",
    "The skateboarder is skateboarding on a skateboard.", "A seated man, seats, a seat.",
    "Sheep grazing; cows; a cow; cattle.", "Donuts, doughnuts, a donut.", "Laptops, a laptop computer.",
    "TVs, a TV, a television, monitors.", "Couches, sofas, a couch.", "Dining tables, a table, desks.",
    "Refrigerators, a fridge, an oven, ovens, microwaves.", "Books, clocks, scissors, toothbrushes.",
    "Airplanes, planes, jets, an air plane.", "Cars, trucks, boats, buses, trains, motorcycles.",
    "Bicycles, bikes, a bicycle.", "Handbags, purses, backpacks, suitcases, a suit case.",
    "Oranges, bananas, apples, broccoli, carrots, pizzas.", "Sandwiches, burgers, a cake, cakes.",
    "Birds, cats, dogs, horses, sheep, cows, elephants, bears, zebras, giraffes.",
    "Bottles, cups, forks, knives, spoons, bowls.", "A mouse, mice, keyboards, remotes, cell phones, phones.",
    "Sinks, toilets, beds, chairs, benches.", "Kites, skis, snowboards, balls, gloves, bats.",
    "Umbrellas, ties, frisbees, surfboards, skateboards.", "A teddybear and a hairdryer.",
    "THE DOG IS BIG. THE CAT IS SMALL.", "Dr. Jones and Mrs. Smith and Ms. Lee have a dog.",
    "The U.K. team. The E.U. flag. A cat.", "A 3-D image of a car.", "Room No. 5 has a bed.",
    "It cost $3.88 (roughly 3,36 euros) in New York. Please buy me two of them. Thanks.",
    "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\nThanks.",
    "A man -- wearing a hat -- holds a bat.", "A man - wearing a hat - holds a bat.",
    "A list: 1. a dog 2. a cat 3. a bird.", "Items: (1) a cup (2) a fork.", "A dog.A cat.A bird.",
    "A dog . A cat . A bird .", "a dog! a cat? a bird.", "The end of the sentence.\"", "He said \"a dog.\" Then left.",
    "'Single quotes' around a 'phrase' with a boat.", "The cats' toys and the dog's bone.",
    "A man's and a woman's bags.", "I'm, you're, we've, they'll, he'd near an oven.",
    "A sign reading 'NO PARKING' by a parking meter.", "A kid's bike; kids' bikes.",
]

FRAGMENTS = [
    "a man", "two men", "a woman", "several people", "a dog", "the vases", "a skateboarder skateboarding",
    "a seated child", "shoes tied", "a toilet", "the seat", "a chair", "hot dogs", "a wine glass", "glasses",
    "e.g.", "approx.", "Mr.", "St.", "U.S.", "3.5", "2,000", "10:30", "1999", "t-shirt", "--", "\u2014", "...",
    "\u201cquoted\u201d", "\"quoted\"", "'quoted'", "(parens)", "[brackets]", "can't", "cannot", "it's", "dogs'",
    "teddy bears", "traffic lights", "a fire hydrant", "baby elephants", "passenger trains", "a bow tie",
    "train tracks", "motor bikes", "cell phones", "surfing", "skiing", "kites", "buses", "knives", "people",
    "children", "a TV", "a laptop", "remotes", "a keyboard", "benches", "couches", "beds", "books", "clocks",
]
ENDINGS = [".", "!", "?", "", ",", ";", ":", ". ", ".\n", "\n\n", "...", "?!"]
# Single characters and pieces for character-level noise (punctuation, quotes, dashes, clitics, abbreviations).
CHARS = list("ab .,;:!?'\"()[]{}<>-\u2013\u2014\u2026*@#$%&`\u00ab\u00bb\u201c\u201d\u2018\u2019\n\t0123456789") + [
    "...", "--", "e.g.", "Mr.", " ", "n't", "'s", "can", "not", "gon", "na", " dog", " man", " seat", " toilet",
]


# Word-level pieces around periods and commas, to exercise Punkt's sentence-boundary decisions.
BOUNDARY_PIECES = [
    "a", "dog", "dog.", "dog,", "Dog.", "man.", "men,", "e.g.", "e.g.,", "i.e.", "etc.", "mr.", "Mr.", "st.", "u.s.",
    "a.m.", "no.", "3.", "3.5", "2,000", "(a", "dog)", "dog.)", "\"dog.\"", "'dog.'", "dog.'", "dog...", "dog?",
    "dog!", "dog;", "dog:", "-", "--", "\u2014", "The", "the", "A", "I", "J.", "K.", "x,y", ",", ".", "..", "?!",
]


def main() -> None:
    rng = random.Random(20240429)
    random_caps = []
    for _ in range(300):
        n_sent = rng.randint(1, 4)
        sentences = []
        for _ in range(n_sent):
            words = rng.sample(FRAGMENTS, rng.randint(2, 7))
            sentences.append(" ".join(words) + rng.choice(ENDINGS))
        text = " ".join(sentences)
        random_caps.append(text[0].upper() + text[1:] if text and rng.random() < 0.5 else text)
    noise = ["".join(rng.choice(CHARS) for _ in range(rng.randint(0, 60))) for _ in range(1500)]
    boundary = [
        rng.choice(["", " ", "\n"]).join(rng.choice(BOUNDARY_PIECES) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.2
        else " ".join(rng.choice(BOUNDARY_PIECES) for _ in range(rng.randint(1, 14)))
        for _ in range(1000)
    ]
    with open("edge_inputs.jsonl", "w", encoding="utf-8") as out:
        for i, cap in enumerate(HAND):
            out.write(json.dumps({"image_id": -1 - i, "caption": cap, "kind": "hand"}, ensure_ascii=False) + "\n")
        for i, cap in enumerate(random_caps):
            out.write(json.dumps({"image_id": -1000 - i, "caption": cap, "kind": "random"}, ensure_ascii=False) + "\n")
        for i, cap in enumerate(noise):
            out.write(json.dumps({"image_id": -2000 - i, "caption": cap, "kind": "noise"}, ensure_ascii=False) + "\n")
        for i, cap in enumerate(boundary):
            out.write(json.dumps({"image_id": -4000 - i, "caption": cap, "kind": "boundary"}, ensure_ascii=False) + "\n")


main()
