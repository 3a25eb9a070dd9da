"""Word lists and phrasings of the "personal facts" chat domain that memchat-nano is trained on.

Written for memchat. `domain.py` turns these into episodes; which values are held out from training is
decided there (by a stable hash), so the lists below are plain data.
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


# --- value pools ------------------------------------------------------------------------------------

FIRST_NAMES = _words("""
Adam Adrian Alice Amelia Amir Ana Andrea Anna Anton Arthur Aurora Ava Beatrice Ben Bianca Boris Bruno
Camille Carla Carlos Caroline Chloe Clara Claude Daniel Daria David Diana Dmitri Edgar Elena Eli Elias
Eliza Emil Emma Enzo Erik Esther Eva Felix Fiona Flora Frank Freya Gabriel Grace Greta Hana Hannah Harry
Helen Henry Hugo Ida Igor Ines Iris Isaac Isabel Ivan Jack Jacob James Jana Jasmine Jonas Josef Julia
Julian Karim Karl Kate Laila Lara Laura Leo Leon Lily Linda Lisa Louis Lucas Lucia Luis Luke Maja Marco
Maria Marie Mario Mark Marta Martin Maya Mia Milan Mila Mina Mira Nadia Naomi Nathan Nina Noah Nora Olga
Oliver Omar Oscar Otto Paul Paula Pedro Peter Philip Rafael Rita Robert Rosa Ruth Sami Sara Simon Sofia
Sonia Stefan Susan Sven Tara Teresa Theo Tobias Tom Una Vera Victor Viktor Walter Yara Yusuf Zoe
""")

PET_NAMES = _words("""
Biscuit Pepper Luna Max Bella Charlie Coco Daisy Milo Rocky Simba Nala Oreo Teddy Ziggy Pumpkin Mochi
Peanut Ginger Shadow Smokey Whiskers Bubbles Noodle Pickles Waffles Muffin Cookie Sunny Buster Rusty
Bandit Pixel Domino Socks Mittens Tiger Cleo Juno Kiwi Olive Poppy Rolo Tofu Nacho Sushi Taco Maple
Bean Fudge Hazel Jasper Lulu Misty Paws Pip Scout Toffee
""")

CITIES = _words("""
Lyon Paris Berlin Madrid Rome Lisbon Vienna Prague Warsaw Dublin London Oslo Stockholm Helsinki
Copenhagen Amsterdam Brussels Zurich Geneva Munich Hamburg Milan Naples Turin Seville Valencia Porto
Krakow Budapest Athens Istanbul Cairo Nairobi Lagos Accra Dakar Tunis Casablanca Johannesburg Toronto
Montreal Vancouver Boston Chicago Denver Seattle Portland Austin Dallas Houston Miami Atlanta Detroit
Phoenix Mexico Lima Bogota Quito Santiago Caracas Havana Tokyo Osaka Kyoto Seoul Busan Beijing Shanghai
Taipei Manila Jakarta Bangkok Hanoi Singapore Delhi Mumbai Chennai Dhaka Karachi Tehran Dubai Doha
Riyadh Beirut Baku Tbilisi Yerevan Kiev Minsk Riga Tallinn Vilnius Sofia Bucharest Belgrade Zagreb
Ljubljana Sarajevo Bratislava Salzburg Bern Basel Lausanne Nice Marseille Bordeaux Toulouse Nantes
Lille Strasbourg Grenoble Rennes Glasgow Edinburgh Cardiff Belfast Leeds Bristol Manchester Liverpool
Sydney Melbourne Perth Auckland Wellington Adelaide Brisbane Hobart
""")

COUNTRIES = _words("""
France Spain Italy Portugal Germany Austria Switzerland Belgium Ireland Scotland Norway Sweden Finland
Denmark Iceland Poland Greece Turkey Egypt Morocco Kenya Ghana Senegal Tanzania Canada Mexico Brazil
Argentina Chile Peru Colombia Cuba Japan Korea China Vietnam Thailand Indonesia India Nepal Mongolia
Australia Georgia Armenia Jordan Oman Croatia Estonia Latvia Hungary Romania Bulgaria Albania Malta
Cyprus Madagascar Namibia Ethiopia Uruguay Ecuador Bolivia Panama Jamaica
""")

JOBS = [
    "teacher", "nurse", "doctor", "engineer", "architect", "lawyer", "chef", "baker", "pilot", "farmer",
    "plumber", "electrician", "carpenter", "journalist", "photographer", "librarian", "pharmacist",
    "dentist", "firefighter", "police officer", "accountant", "software developer", "data analyst",
    "graphic designer", "translator", "musician", "painter", "writer", "actor", "dancer", "gardener",
    "mechanic", "scientist", "biologist", "chemist", "physicist", "veterinarian", "surgeon", "midwife",
    "social worker", "psychologist", "economist", "banker", "cashier", "waiter", "bus driver",
    "taxi driver", "tailor", "florist", "hairdresser", "butcher", "fisherman", "sailor", "soldier",
    "professor", "student", "researcher", "editor", "project manager", "sales manager", "receptionist",
    "interior designer", "web designer", "game designer", "nanny", "personal trainer", "yoga teacher",
    "tour guide", "real estate agent", "shop owner", "potter", "jeweller", "optician", "geologist",
]

COMPANIES = _words("""
Brightwave Northwind Bluepeak Greenfield Silverline Redstone Sunhill Clearpath Blackbird Starling
Ironwood Oakridge Riverbend Stonegate Westbrook Eastlake Goldcrest Highmoor Lakeside Maplewood Nimbus
Orbitel Pinecone Quartzly Rainford Sparkline Tidewell Urbanic Vantage Wildrose Zephyrus Cobaltix
Driftwood Emberly Foxglove Granite Harborview Inkwell Juniper Keystone Lumina Meridian Novacraft
""")

COLOURS = [
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "grey", "brown",
    "teal", "turquoise", "navy blue", "maroon", "lilac", "amber", "gold", "silver", "beige", "crimson",
    "lavender", "olive green", "sky blue", "coral", "mint green", "burgundy", "indigo",
]

FOODS = [
    "pizza", "sushi", "pasta", "lasagna", "ramen", "tacos", "curry", "paella", "risotto", "burgers",
    "dumplings", "pho", "falafel", "hummus", "couscous", "goulash", "moussaka", "fish and chips",
    "pad thai", "burritos", "kebab", "pancakes", "omelettes", "steak", "roast chicken", "mushroom soup",
    "tomato soup", "gnocchi", "ravioli", "quiche", "ratatouille", "biryani", "samosas", "empanadas",
    "noodles", "fried rice", "spring rolls", "dim sum", "poke bowls", "bibimbap", "tagine", "shakshuka",
    "fondue", "raclette", "pierogi", "caesar salad", "lentil soup", "grilled salmon", "enchiladas",
]

DRINKS = [
    "coffee", "green tea", "black tea", "mint tea", "orange juice", "apple juice", "lemonade",
    "hot chocolate", "sparkling water", "iced tea", "espresso", "cappuccino", "latte", "chai",
    "ginger ale", "mango lassi", "smoothies", "kombucha", "root beer", "cola", "milkshakes",
    "herbal tea", "matcha", "cold brew", "tomato juice", "coconut water", "cherry juice", "oat milk",
]

FRUITS = [
    "apples", "bananas", "oranges", "strawberries", "blueberries", "raspberries", "cherries", "grapes",
    "mangoes", "pineapples", "peaches", "pears", "plums", "apricots", "kiwis", "lemons", "watermelon",
    "melons", "figs", "dates", "pomegranates", "papayas", "lychees", "blackberries", "gooseberries",
    "nectarines", "tangerines", "passion fruit", "guavas", "cranberries",
]

DESSERTS = [
    "chocolate cake", "cheesecake", "apple pie", "ice cream", "tiramisu", "creme brulee", "brownies",
    "cookies", "banana bread", "panna cotta", "lemon tart", "macarons", "doughnuts", "waffles",
    "carrot cake", "rice pudding", "baklava", "churros", "mochi", "fruit salad", "gelato", "eclairs",
    "pavlova", "sorbet", "cupcakes", "crepes",
]

SPORTS = [
    "football", "tennis", "basketball", "volleyball", "swimming", "running", "cycling", "rowing",
    "skiing", "snowboarding", "surfing", "climbing", "boxing", "judo", "karate", "fencing", "golf",
    "rugby", "cricket", "baseball", "hockey", "handball", "badminton", "table tennis", "squash",
    "sailing", "kayaking", "skating", "gymnastics", "archery", "yoga", "pilates", "hiking", "horse riding",
    "water polo",
]

MUSIC = [
    "jazz", "rock", "pop", "classical music", "hip hop", "blues", "reggae", "techno", "house music",
    "folk music", "country music", "metal", "punk", "soul", "funk", "disco", "opera", "salsa", "k-pop",
    "indie rock", "electronic music", "gospel", "bossa nova", "flamenco", "swing",
]

MOVIE_GENRES = [
    "comedies", "dramas", "thrillers", "horror films", "science fiction", "westerns", "documentaries",
    "musicals", "romantic comedies", "action films", "animated films", "war films", "mysteries",
    "fantasy films", "crime films", "period dramas",
]

SEASONS = ["spring", "summer", "autumn", "winter"]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]

ANIMALS = [
    "dolphins", "elephants", "giraffes", "lions", "tigers", "owls", "penguins", "foxes", "wolves", "bears",
    "otters", "koalas", "pandas", "horses", "rabbits", "squirrels", "hedgehogs", "turtles", "parrots",
    "eagles", "whales", "zebras", "cheetahs", "flamingos", "octopuses", "seals", "deer", "badgers",
    "lemurs", "sloths", "kangaroos", "hummingbirds", "jellyfish", "frogs", "camels", "goats",
]

PET_KINDS = [
    "dog", "cat", "rabbit", "hamster", "parrot", "turtle", "goldfish", "guinea pig", "canary", "lizard",
    "snake", "ferret", "tortoise", "budgie", "chinchilla", "gecko", "pony", "donkey", "chicken", "duck",
]

FLOWERS = [
    "roses", "tulips", "sunflowers", "daisies", "lilies", "orchids", "peonies", "lavender flowers",
    "poppies", "daffodils", "violets", "irises", "magnolias", "camellias", "dahlias", "marigolds",
    "hyacinths", "carnations", "lilacs", "jasmine flowers", "cherry blossoms", "bluebells",
]

ALLERGENS = [
    "peanuts", "cats", "dogs", "pollen", "dust", "shellfish", "eggs", "milk", "gluten", "wheat",
    "soy", "sesame", "strawberries", "penicillin", "bee stings", "latex", "walnuts", "almonds", "mould",
    "horses", "kiwis", "mustard", "celery", "tomatoes", "feathers", "grass", "wasp stings",
]

INSTRUMENTS = [
    "piano", "guitar", "violin", "cello", "drums", "flute", "clarinet", "saxophone", "trumpet",
    "trombone", "harp", "ukulele", "accordion", "bass guitar", "banjo", "mandolin", "oboe", "harmonica",
    "viola", "double bass", "organ", "bagpipes", "tuba", "sitar", "xylophone",
]

LANGUAGES = [
    "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish", "Norwegian", "Danish",
    "Finnish", "Polish", "Czech", "Greek", "Turkish", "Arabic", "Hebrew", "Persian", "Hindi", "Bengali",
    "Urdu", "Japanese", "Korean", "Mandarin", "Cantonese", "Vietnamese", "Thai", "Indonesian", "Swahili",
    "Russian", "Ukrainian", "Romanian", "Hungarian", "Icelandic", "Irish", "Welsh", "Catalan", "Basque",
    "Latin", "Esperanto", "Tagalog",
]

HOBBIES = [
    "knitting", "painting", "drawing", "gardening", "baking", "cooking", "reading", "chess",
    "photography", "birdwatching", "fishing", "camping", "pottery", "woodworking", "sewing",
    "calligraphy", "origami", "dancing", "singing", "juggling", "stargazing", "rock climbing",
    "scuba diving", "sailing", "writing poems", "playing cards", "doing puzzles", "collecting stamps",
    "collecting coins", "building model trains", "running marathons", "bouldering", "skateboarding",
    "crocheting", "embroidery", "beekeeping", "kite flying", "geocaching", "video games",
]

CARS = _words("""
Toyota Honda Ford Volvo Renault Peugeot Fiat Skoda Tesla Mazda Nissan Subaru Kia Hyundai Audi Porsche
Volkswagen Citroen Opel Jeep Lexus Mini Seat Dacia Saab Suzuki Mitsubishi Alfa Jaguar Lancia
""")

SUBJECTS = [
    "history", "mathematics", "physics", "chemistry", "biology", "medicine", "law", "philosophy",
    "economics", "psychology", "sociology", "linguistics", "literature", "music", "art history",
    "architecture", "computer science", "engineering", "geography", "geology", "astronomy",
    "political science", "anthropology", "archaeology", "statistics", "nursing", "journalism",
    "theology", "agriculture", "design", "marketing", "finance", "education", "dentistry",
    "veterinary science",
]

AGES = [str(n) for n in range(18, 91)]

STREETS = _words("""
Maple Oak Cedar Elm Pine Birch Willow Chestnut Walnut Cherry Magnolia Poplar Aspen Hawthorn Holly
Ivy Laurel Linden Rowan Spruce Sycamore Beech Alder Acacia Juniper Cypress Hazel Mulberry Olive
Sequoia Larch Heather Primrose Meadow Garden Mill Church Bridge River Station Harbor Castle
""")

GAMES = [
    "chess", "Monopoly", "Scrabble", "poker", "bridge", "Catan", "Risk", "Cluedo", "backgammon",
    "dominoes", "mahjong", "checkers", "Uno", "Carcassonne", "Ticket to Ride", "Pictionary",
    "Trivial Pursuit", "Go", "solitaire", "Jenga", "Battleship", "Othello",
]

COFFEE_STYLES = [
    "black", "with milk", "with oat milk", "with sugar", "with cream", "with honey", "very strong",
    "with cinnamon", "with almond milk", "with a little milk", "iced", "with soy milk", "with caramel",
]

# --- relations ----------------------------------------------------------------------------------------
# (key, pool, statements, questions, answers, unknown, changes). In phrasings "{v}" is the value and
# "{a}" its article ("a" or "an"); "unknown" completes "I don't know ..." when nothing was told.

RELATIONS: list[tuple[str, str, list[str], list[str], list[str], str, list[str]]] = [
    (
        "city", "cities",
        ["I live in {v}.", "I'm living in {v} at the moment.", "My home is in {v}.",
         "These days I live in {v}.", "My flat is in {v}.", "Home for me is {v}."],
        ["Where do I live?", "Which city do I live in?", "Do you remember where I live?",
         "Where is my home?", "In which city is my home?"],
        ["You live in {v}.", "You told me you live in {v}.", "Your home is in {v}."],
        "where you live",
        ["I moved to {v}.", "I just moved to {v}.", "We relocated to {v} last month.",
         "Big news: I now live in {v}."],
    ),
    (
        "hometown", "cities",
        ["I was born in {v}.", "My hometown is {v}.", "I'm originally from {v}.", "{v} is where I was born."],
        ["Where was I born?", "What is my hometown?", "Where am I originally from?"],
        ["You were born in {v}.", "Your hometown is {v}.", "You are originally from {v}."],
        "where you were born",
        [],
    ),
    (
        "dream_country", "countries",
        ["I really want to visit {v} one day.", "My dream trip is to {v}.", "One day I will travel to {v}.",
         "I've always wanted to see {v}."],
        ["Which country do I dream of visiting?", "Where is my dream trip?",
         "Which country do I want to visit?"],
        ["You want to visit {v}.", "Your dream trip is to {v}.", "You dream of visiting {v}."],
        "which country you dream of visiting",
        ["I changed my mind, my dream trip is now to {v}."],
    ),
    (
        "job", "jobs",
        ["I work as {a} {v}.", "I'm {a} {v}.", "My job: I'm {a} {v}.", "I earn my living as {a} {v}."],
        ["What do I do for a living?", "What is my job?", "What's my profession?", "What work do I do?"],
        ["You work as {a} {v}.", "You are {a} {v}.", "You told me you work as {a} {v}."],
        "what you do for a living",
        ["I changed jobs, now I work as {a} {v}.", "I started a new career as {a} {v}.",
         "I'm not in my old job any more, I'm {a} {v} now."],
    ),
    (
        "employer", "companies",
        ["I work at {v}.", "My employer is {v}.", "I've got a job at a company called {v}."],
        ["Where do I work?", "Which company do I work for?", "Who is my employer?"],
        ["You work at {v}.", "Your employer is {v}.", "You work for {v}."],
        "where you work",
        ["I just started at a new company, {v}.", "I switched employers, I now work at {v}."],
    ),
    (
        "partner", "names",
        ["My partner's name is {v}.", "My partner is called {v}.", "I'm married to {v}.",
         "I live with my partner {v}."],
        ["What is my partner's name?", "Who is my partner?", "What's the name of my partner?"],
        ["Your partner is called {v}.", "Your partner's name is {v}.", "You are with {v}."],
        "your partner's name",
        ["I have a new partner now, called {v}."],
    ),
    (
        "mother", "names",
        ["My mother's name is {v}.", "My mom is called {v}.", "My mother is {v}."],
        ["What is my mother's name?", "What's my mom called?", "Who is my mother?"],
        ["Your mother is called {v}.", "Your mom's name is {v}."],
        "your mother's name",
        [],
    ),
    (
        "father", "names",
        ["My father's name is {v}.", "My dad is called {v}.", "My father is {v}."],
        ["What is my father's name?", "What's my dad called?", "Who is my father?"],
        ["Your father is called {v}.", "Your dad's name is {v}."],
        "your father's name",
        [],
    ),
    (
        "sister", "names",
        ["My sister is called {v}.", "My sister's name is {v}.", "I have a sister named {v}."],
        ["What is my sister's name?", "What's my sister called?"],
        ["Your sister is called {v}.", "Your sister's name is {v}."],
        "your sister's name",
        [],
    ),
    (
        "brother", "names",
        ["My brother is called {v}.", "My brother's name is {v}.", "I have a brother named {v}."],
        ["What is my brother's name?", "What's my brother called?"],
        ["Your brother is called {v}.", "Your brother's name is {v}."],
        "your brother's name",
        [],
    ),
    (
        "best_friend", "names",
        ["My best friend is {v}.", "My best friend is called {v}.", "{v} is my best friend."],
        ["Who is my best friend?", "What is my best friend's name?"],
        ["Your best friend is {v}.", "Your best friend is called {v}."],
        "who your best friend is",
        ["{v} is my new best friend."],
    ),
    (
        "daughter", "names",
        ["My daughter is called {v}.", "My daughter's name is {v}.", "I have a little girl named {v}."],
        ["What is my daughter's name?", "What's my daughter called?"],
        ["Your daughter is called {v}.", "Your daughter's name is {v}."],
        "your daughter's name",
        [],
    ),
    (
        "son", "names",
        ["My son is called {v}.", "My son's name is {v}.", "I have a little boy named {v}."],
        ["What is my son's name?", "What's my son called?"],
        ["Your son is called {v}.", "Your son's name is {v}."],
        "your son's name",
        [],
    ),
    (
        "neighbour", "names",
        ["My neighbour is called {v}.", "My next-door neighbour's name is {v}."],
        ["What is my neighbour's name?", "Who is my neighbour?"],
        ["Your neighbour is called {v}.", "Your neighbour's name is {v}."],
        "your neighbour's name",
        ["A new neighbour moved in next door, called {v}."],
    ),
    (
        "boss", "names",
        ["My boss is called {v}.", "My manager's name is {v}.", "I report to {v} at work."],
        ["What is my boss's name?", "Who is my manager?", "Who do I report to?"],
        ["Your boss is called {v}.", "Your manager is {v}."],
        "who your boss is",
        ["I have a new boss now, called {v}."],
    ),
    (
        "dog", "pets",
        ["My dog is called {v}.", "My dog's name is {v}.", "I have a dog named {v}."],
        ["What is my dog's name?", "What's my dog called?", "What did I name my dog?"],
        ["Your dog is called {v}.", "Your dog's name is {v}."],
        "your dog's name",
        [],
    ),
    (
        "cat", "pets",
        ["My cat is called {v}.", "My cat's name is {v}.", "I have a cat named {v}."],
        ["What is my cat's name?", "What's my cat called?", "What did I name my cat?"],
        ["Your cat is called {v}.", "Your cat's name is {v}."],
        "your cat's name",
        [],
    ),
    (
        "pet_kind", "pet_kinds",
        ["I have a pet {v}.", "At home I keep a {v}.", "My pet is a {v}."],
        ["What kind of pet do I have?", "What pet do I keep?", "What animal do I have at home?"],
        ["You have a pet {v}.", "Your pet is a {v}."],
        "what kind of pet you have",
        ["We adopted a new pet, a {v}."],
    ),
    (
        "colour", "colours",
        ["My favourite colour is {v}.", "I love the colour {v}.", "The colour I like best is {v}."],
        ["What is my favourite colour?", "Which colour do I like best?", "What's my favourite colour?"],
        ["Your favourite colour is {v}.", "You like {v} best."],
        "your favourite colour",
        ["These days my favourite colour is {v}.", "I've changed my mind, my favourite colour is now {v}."],
    ),
    (
        "food", "foods",
        ["My favourite food is {v}.", "I could eat {v} every day.", "Nothing beats {v} for me."],
        ["What is my favourite food?", "What food do I love most?", "What's my favourite dish?"],
        ["Your favourite food is {v}.", "You love {v}."],
        "your favourite food",
        ["Lately my favourite food has become {v}."],
    ),
    (
        "drink", "drinks",
        ["My favourite drink is {v}.", "I always drink {v}.", "I love a glass of {v}."],
        ["What is my favourite drink?", "What do I like to drink?"],
        ["Your favourite drink is {v}.", "You like to drink {v}."],
        "your favourite drink",
        ["I switched to {v}, it's my new favourite drink."],
    ),
    (
        "fruit", "fruits",
        ["My favourite fruit is {v}.", "I love eating {v}.", "{v} are my favourite fruit."],
        ["What is my favourite fruit?", "Which fruit do I like best?"],
        ["Your favourite fruit is {v}.", "You love {v}."],
        "your favourite fruit",
        [],
    ),
    (
        "dessert", "desserts",
        ["My favourite dessert is {v}.", "For dessert I always pick {v}."],
        ["What is my favourite dessert?", "Which dessert do I always pick?"],
        ["Your favourite dessert is {v}.", "You always pick {v}."],
        "your favourite dessert",
        [],
    ),
    (
        "sport", "sports",
        ["My favourite sport is {v}.", "I love {v}.", "I do {v} every week."],
        ["What is my favourite sport?", "Which sport do I love?", "What sport do I do?"],
        ["Your favourite sport is {v}.", "You love {v}."],
        "your favourite sport",
        ["I gave up my old sport and took up {v}."],
    ),
    (
        "music", "music",
        ["My favourite music is {v}.", "I mostly listen to {v}.", "I'm a big fan of {v}."],
        ["What music do I like?", "What is my favourite music?", "What do I listen to?"],
        ["Your favourite music is {v}.", "You mostly listen to {v}."],
        "what music you like",
        ["I'm into {v} these days."],
    ),
    (
        "movies", "movie_genres",
        ["My favourite films are {v}.", "I mostly watch {v}.", "I love watching {v}."],
        ["What kind of films do I like?", "What are my favourite films?"],
        ["Your favourite films are {v}.", "You love watching {v}."],
        "what films you like",
        [],
    ),
    (
        "season", "seasons",
        ["My favourite season is {v}.", "I like {v} best of all seasons."],
        ["What is my favourite season?", "Which season do I like best?"],
        ["Your favourite season is {v}.", "You like {v} best."],
        "your favourite season",
        [],
    ),
    (
        "weekday", "weekdays",
        ["My favourite day of the week is {v}.", "I like {v} more than any other day."],
        ["What is my favourite day of the week?", "Which day do I like best?"],
        ["Your favourite day is {v}.", "You like {v} best."],
        "your favourite day of the week",
        [],
    ),
    (
        "animal", "animals",
        ["My favourite animals are {v}.", "I adore {v}.", "I think {v} are the best animals."],
        ["What are my favourite animals?", "Which animals do I adore?"],
        ["Your favourite animals are {v}.", "You adore {v}."],
        "your favourite animals",
        [],
    ),
    (
        "flower", "flowers",
        ["My favourite flowers are {v}.", "I always buy {v}."],
        ["What are my favourite flowers?", "Which flowers do I like?"],
        ["Your favourite flowers are {v}.", "You like {v}."],
        "your favourite flowers",
        [],
    ),
    (
        "birthday", "months",
        ["My birthday is in {v}.", "I was born in the month of {v}.", "I celebrate my birthday in {v}."],
        ["When is my birthday?", "In which month is my birthday?", "Which month was I born in?"],
        ["Your birthday is in {v}.", "You were born in {v}."],
        "when your birthday is",
        [],
    ),
    (
        "allergy", "allergens",
        ["I'm allergic to {v}.", "I have an allergy to {v}.", "I can't be near {v}, I'm allergic."],
        ["What am I allergic to?", "Do I have any allergies?", "What is my allergy?"],
        ["You are allergic to {v}.", "You have an allergy to {v}."],
        "what you are allergic to",
        [],
    ),
    (
        "instrument", "instruments",
        ["I play the {v}.", "I've been learning the {v} for years.", "My instrument is the {v}."],
        ["Which instrument do I play?", "What instrument do I play?"],
        ["You play the {v}.", "Your instrument is the {v}."],
        "which instrument you play",
        ["I've started playing the {v} instead."],
    ),
    (
        "learning_language", "languages",
        ["I'm learning {v}.", "I take {v} lessons twice a week.", "I'm studying {v} at night school."],
        ["Which language am I learning?", "What language am I studying?"],
        ["You are learning {v}.", "You are studying {v}."],
        "which language you are learning",
        ["I stopped my old lessons and now I'm learning {v}."],
    ),
    (
        "native_language", "languages",
        ["My native language is {v}.", "I grew up speaking {v}.", "My mother tongue is {v}."],
        ["What is my native language?", "What is my mother tongue?"],
        ["Your native language is {v}.", "Your mother tongue is {v}."],
        "what your native language is",
        [],
    ),
    (
        "hobby", "hobbies",
        ["My hobby is {v}.", "In my free time I enjoy {v}.", "I spend my weekends {v}."],
        ["What is my hobby?", "What do I do in my free time?", "What do I enjoy in my spare time?"],
        ["Your hobby is {v}.", "You enjoy {v}."],
        "what your hobby is",
        ["I have a new hobby: {v}."],
    ),
    (
        "car", "cars",
        ["I drive a {v}.", "My car is a {v}.", "I own a {v}."],
        ["What car do I drive?", "What kind of car do I have?", "What is my car?"],
        ["You drive a {v}.", "Your car is a {v}."],
        "what car you drive",
        ["I sold my old car and bought a {v}."],
    ),
    (
        "studied", "subjects",
        ["I studied {v} at university.", "My degree is in {v}.", "I have a degree in {v}."],
        ["What did I study?", "What is my degree in?", "What did I study at university?"],
        ["You studied {v}.", "Your degree is in {v}."],
        "what you studied",
        [],
    ),
    (
        "age", "ages",
        ["I am {v} years old.", "I'm {v}.", "I turned {v} this year."],
        ["How old am I?", "What is my age?", "Do you know how old I am?"],
        ["You are {v} years old.", "You are {v}."],
        "how old you are",
        ["I just turned {v}.", "I had my birthday, I'm {v} now."],
    ),
    (
        "street", "streets",
        ["I live on {v} Street.", "My address is on {v} Street.", "Our house is on {v} Street."],
        ["What street do I live on?", "Which street is my home on?"],
        ["You live on {v} Street.", "Your home is on {v} Street."],
        "which street you live on",
        ["We moved house, we're on {v} Street now."],
    ),
    (
        "game", "games",
        ["My favourite game is {v}.", "I love playing {v}.", "Every Friday I play {v} with friends."],
        ["What is my favourite game?", "What game do I love playing?"],
        ["Your favourite game is {v}.", "You love playing {v}."],
        "your favourite game",
        [],
    ),
    (
        "coffee", "coffee_styles",
        ["I take my coffee {v}.", "I like my coffee {v}.", "I drink my coffee {v}."],
        ["How do I take my coffee?", "How do I like my coffee?"],
        ["You take your coffee {v}.", "You like your coffee {v}."],
        "how you take your coffee",
        ["I take my coffee {v} now."],
    ),
]

# --- the assistant's side -------------------------------------------------------------------------------

ACKNOWLEDGEMENTS = [
    "Got it.", "Noted!", "Thanks for telling me.", "Good to know!", "I'll remember that.", "Okay, noted.",
    "Thanks, I'll keep that in mind.", "Nice, thanks for sharing.", "Understood.", "Lovely!",
]
# "Got it, you live in Lyon." : a prefix before the (lower-cased) answer sentence.
ECHO_PREFIXES = ["Got it,", "Okay,", "Noted,", "Nice, so", "Thanks, so", "I see,"]
CHANGE_ACKNOWLEDGEMENTS = [
    "Thanks for the update.", "Okay, I'll update that.", "Noted, that's a change!", "Good to know, updated.",
]
# The model's words for "nothing was told": the first clause completes with a relation's "unknown".
UNKNOWN_ANSWERS = [
    "I don't know {u}. You haven't told me yet.",
    "You haven't told me {u}, so I don't know.",
    "I don't know {u}, you never told me.",
]
# Lower-case markers by which an answer says it does not know (used by `memchat eval retention`).
ABSTAIN_MARKERS = ("don't know", "haven't told me", "never told me", "do not know")

# --- chit-chat: the distractor turns ---------------------------------------------------------------------

CHITCHAT: list[tuple[str, str]] = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there, how are you?", "I'm doing well, thank you. How are you?"),
    ("Good morning!", "Good morning! I hope you slept well."),
    ("Good night.", "Good night, sleep well!"),
    ("Thanks for your help.", "You're welcome, happy to help."),
    ("Tell me a joke.", "Why did the bicycle fall over? Because it was two tired."),
    ("Another joke, please.", "What do you call a fish with no eyes? A fsh."),
    ("I'm a bit tired today.", "Sorry to hear that. Maybe take a short break and drink some water."),
    ("It's raining again.", "Rainy days are good for a book and a warm drink."),
    ("The weather is lovely today.", "That's great! A perfect day for a walk outside."),
    ("What should I cook tonight?", "How about a simple vegetable soup with fresh bread?"),
    ("Can you give me a tip for sleeping better?", "Try to go to bed at the same time every night."),
    ("I have a meeting in ten minutes.", "Good luck with your meeting!"),
    ("I finished my work early.", "Well done! Enjoy your free time."),
    ("What's a good way to relax?", "A slow walk, some music or a few deep breaths can help."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("Why is the sky blue?", "Sunlight scatters in the air, and blue light scatters the most."),
    ("How far is the moon?", "The moon is about 384,000 kilometres away."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("How long should I boil an egg?", "About seven to nine minutes for a firm yolk."),
    ("I can't decide what to watch.", "Maybe pick something short, so you can still get to bed early."),
    ("I'm going for a run.", "Have a good run, and don't forget to stretch."),
    ("I just got back from the shop.", "Welcome back! Did you find everything you needed?"),
    ("Can you help me write a shopping list?", "Sure. What do you need for the week?"),
    ("I need bread, eggs and butter.", "Okay: bread, eggs and butter. Anything else?"),
    ("That's all, thanks.", "You're welcome. Have a nice day!"),
    ("I'm bored.", "How about learning something new, like a card trick?"),
    ("Give me a fun fact.", "Octopuses have three hearts and blue blood."),
    ("Another fun fact?", "Honey never spoils if it is stored well."),
    ("What time is it in London?", "I can't see a clock, but your phone will know."),
    ("How do I make a cup of tea?", "Boil water, pour it over the tea, wait three minutes, and enjoy."),
    ("I'm nervous about tomorrow.", "That's normal. Prepare a little tonight and get some sleep."),
    ("I had a great day.", "I'm glad to hear it! What made it so good?"),
    ("Work was busy today.", "Busy days are tiring. I hope you can rest this evening."),
    ("Remind me to drink more water.", "Okay! Try keeping a glass on your desk."),
    ("What's a good name for a plant?", "How about Leafy, or Mister Green?"),
    ("Can you recommend a hobby?", "Many people enjoy drawing, walking or learning an instrument."),
    ("I'm cleaning the kitchen.", "Good luck! Music makes cleaning go faster."),
    ("My phone battery is almost empty.", "Better find a charger soon."),
    ("I lost my keys again.", "Have you checked your coat pockets and the table by the door?"),
    ("Found them!", "Great! Maybe keep a small bowl by the door for them."),
    ("What's two plus two?", "Two plus two is four."),
    ("What is seven times eight?", "Seven times eight is fifty-six."),
    ("How do you say hello in Spanish?", "In Spanish you say hola."),
    ("How do you say thank you in French?", "In French you say merci."),
    ("Do you like music?", "I enjoy hearing about the music people love."),
    ("Do you ever sleep?", "No, but I'm always here when you need me."),
    ("What can you do?", "I can chat, help you plan, and remember what you tell me."),
    ("Let's talk about something else.", "Sure! What would you like to talk about?"),
    ("I'm making pancakes.", "Yum! Do you add anything special to them?"),
    ("The train is late again.", "That's annoying. I hope it comes soon."),
    ("I'm at the station now.", "Safe travels!"),
    ("I watched a good film yesterday.", "Nice! Was it funny or more serious?"),
    ("It was pretty funny.", "Funny films are perfect after a long week."),
    ("Can you suggest a quick lunch?", "A sandwich with cheese and salad is quick and easy."),
    ("I'm trying to read more.", "A few pages every evening adds up quickly."),
    ("I started a new book.", "Exciting! Let me know how you like it."),
    ("I should go to bed.", "Good idea. Sleep well!"),
    ("I'm back.", "Welcome back! What's up?"),
    ("Not much.", "That's fine. I'm here if you want to chat."),
    ("How are you today?", "I'm fine, thanks for asking."),
    ("What's the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What's the largest ocean?", "The Pacific is the largest ocean."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Why do leaves change colour?", "In autumn trees stop making green chlorophyll, so other colours show."),
    ("Any tips for a job interview?", "Be on time, listen carefully and give short examples."),
    ("I'm learning to juggle.", "Start with two balls, then add a third."),
    ("My plants look sad.", "They might need more light or a little less water."),
    ("It's so hot today.", "Stay in the shade and drink plenty of water."),
    ("It's freezing outside.", "Wrap up warm and wear a hat."),
    ("I'm going to the beach.", "Have fun, and don't forget sunscreen!"),
    ("I need to focus.", "Try working for twenty-five minutes, then take a short break."),
    ("Can you count to five?", "One, two, three, four, five."),
    ("Say something nice.", "You're doing better than you think."),
    ("I cooked dinner for friends.", "How lovely! I hope everyone enjoyed it."),
    ("They loved it.", "Wonderful! Cooking for friends is a great gift."),
    ("I'm going to a concert tonight.", "Enjoy the music!"),
    ("What rhymes with cat?", "Hat, bat, mat and sat all rhyme with cat."),
    ("How do I stay motivated?", "Set small goals and celebrate each one."),
    ("I ran five kilometres today.", "Great job! That's a solid run."),
    ("The printer is broken again.", "Try turning it off and on again."),
    ("I'm planning a trip.", "Nice! Where would you like to go?"),
    ("I haven't decided yet.", "Take your time, planning is half the fun."),
    ("Can you keep a secret?", "I'll keep what you tell me in memory, but I won't share it."),
    ("What's the opposite of early?", "The opposite of early is late."),
    ("Spell the word house.", "H, O, U, S, E."),
    ("I'm hungry.", "Maybe have a snack, like some nuts or a piece of fruit."),
    ("I'm thirsty.", "A glass of water would help."),
    ("Is it a good day for a walk?", "If it's dry outside, a walk is always a good idea."),
    ("I painted my room.", "How exciting! What does it look like now?"),
    ("I need a break.", "Take five minutes, stretch and look out of the window."),
    ("What's the date today?", "I can't see a calendar, but your phone shows the date."),
    ("Do you remember our chat yesterday?", "I remember what you've told me, so feel free to ask."),
    ("Let's play a word game.", "Sure! Name an animal that starts with the letter B."),
    ("Bear.", "Good one! Now a fruit that starts with P."),
    ("Okay.", "Alright. Anything else on your mind?"),
    ("Yes, thanks.", "You're welcome!"),
    ("No, that's all.", "Okay, talk to you later!"),
]

# Building blocks for more chit-chat: (user, assistant) with a slot filled from the list after them.
CHITCHAT_TEMPLATES: list[tuple[str, str, list[str]]] = [
    ("Can you suggest a {x} recipe?", "Sure, a simple {x} recipe is a good start.",
     ["quick", "healthy", "vegetarian", "cheap", "easy", "warm", "summer", "winter"]),
    ("What do you think about {x}?", "{X} can be a lot of fun if you give it a try.",
     ["board games", "long walks", "early mornings", "rainy weekends", "road trips", "podcasts"]),
    ("I'm going to {x} later.", "Sounds good, enjoy {x}!",
     ["the gym", "the market", "the library", "the park", "the cinema", "the office", "a party"]),
    ("Any advice for {x}?", "For {x}, start small and be patient with yourself.",
     ["learning to cook", "running a marathon", "saving money", "waking up early", "making friends"]),
    ("How do I clean {x}?", "Warm water, a little soap and a soft cloth work well for {x}.",
     ["a window", "an oven", "a bike", "my shoes", "a mirror", "a teapot"]),
    ("Tell me something about {x}.", "{X} are fascinating; there is always more to learn about them.",
     ["volcanoes", "stars", "rivers", "mountains", "clouds", "deserts", "forests", "islands"]),
    ("I feel {x} today.", "Thanks for telling me you feel {x}. I'm here if you want to talk.",
     ["happy", "sleepy", "calm", "stressed", "excited", "grumpy", "relaxed", "busy"]),
    ("What's a good {x} to start the day?", "A glass of water and a short {x} are a nice start.",
     ["habit", "stretch", "walk", "routine", "breakfast"]),
]
