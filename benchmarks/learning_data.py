#!/usr/bin/env python
"""Writes the proof-of-learning feedback set: data/learning/train.jsonl, heldout.jsonl and eval.jsonl.

The property is CONCISENESS, measurable on any generated text: a desirable completion is a correct, direct
answer of one or two sentences (<= 35 words, written by hand below); an undesirable one states the same
facts padded to 80+ words with filler (an opener, a restatement of the question, a repetition, "In
conclusion", "I hope this helps!"). The padding is assembled here from varied templates with a fixed seed,
so the files are reproducible: `python benchmarks/learning_data.py` rewrites them byte for byte.

KTO is unpaired: most training prompts get both labels, some only one (as real feedback would).
The held-out questions are different questions (none is in training); each carries its concise answer and a
verbose variant so the CI test can score both with a model, and the factual ones a `key` (a regex the right
answer contains: "Rome", "168") so the benchmark can tell whether brevity cost correctness.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "learning"
SEED = 13
CONCISE_MAX_WORDS = 35
VERBOSE_MIN_WORDS = 80

TRAIN = [
    # geography and general facts
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    (
        "What is the longest river in the world?",
        "The Nile, at about 6,650 km, is usually listed as the longest river, though some measurements put the "
        "Amazon slightly ahead.",
    ),
    (
        "What is the largest ocean on Earth?",
        "The Pacific Ocean is the largest, covering about a third of Earth's surface.",
    ),
    (
        "Which is the largest desert in the world?",
        "The largest desert is Antarctica; the largest hot desert is the Sahara.",
    ),
    (
        "What is the tallest mountain in the world?",
        "Mount Everest is the tallest mountain above sea level, at about 8,849 meters.",
    ),
    (
        "How many continents are there?",
        "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America.",
    ),
    ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
    ("What currency does the United Kingdom use?", "The United Kingdom uses the pound sterling (GBP)."),
    ("Which country has the largest population?", "India has the largest population, having overtaken China in 2023."),
    (
        "What is the smallest country in the world?",
        "Vatican City is the smallest country, at about 0.44 square kilometers.",
    ),
    ("In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt, near Cairo."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    (
        "How many planets are in the solar system?",
        "There are eight planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus and Neptune.",
    ),
    (
        "What is the largest country by area?",
        "Russia is the largest country by area, at about 17 million square kilometers.",
    ),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris, France, on the Champ de Mars by the Seine."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    # science
    (
        "Why is the sky blue?",
        "Air molecules scatter blue sunlight much more than red light (Rayleigh scattering), so blue light reaches "
        "our eyes from all directions.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants use sunlight to turn carbon dioxide and water into glucose and oxygen.",
    ),
    (
        "At what temperature does water boil?",
        "At sea level, water boils at 100 °C (212 °F); at higher altitudes it boils at a lower temperature.",
    ),
    ("What is the chemical symbol for gold?", 'The chemical symbol for gold is Au, from the Latin "aurum".'),
    (
        "What is DNA?",
        "DNA (deoxyribonucleic acid) is the molecule that carries the genetic instructions for the growth, "
        "function and reproduction of living things.",
    ),
    (
        "How long does light from the Sun take to reach Earth?",
        "Sunlight takes about 8 minutes and 20 seconds to reach Earth.",
    ),
    ("What is the speed of light?", "The speed of light in a vacuum is about 299,792 kilometers per second."),
    (
        "What causes the seasons?",
        "Seasons are caused by the tilt of Earth's axis, about 23.5 degrees, which changes how directly sunlight "
        "hits each hemisphere during the year.",
    ),
    (
        "What is gravity?",
        "Gravity is the force by which masses attract each other; it keeps us on the ground and the planets in "
        "orbit around the Sun.",
    ),
    (
        "What is the difference between a virus and a bacterium?",
        "Bacteria are single-celled organisms that can reproduce on their own; viruses are much smaller and can "
        "only multiply inside a host's cells.",
    ),
    ("What gas do humans exhale?", "Humans exhale carbon dioxide, along with nitrogen, unused oxygen and water vapor."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 °F at sea level."),
    (
        "What is an atom?",
        "An atom is the smallest unit of a chemical element: a nucleus of protons and neutrons surrounded by "
        "electrons.",
    ),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body."),
    (
        "Why do we have tides?",
        "Tides are caused mainly by the Moon's gravity pulling on Earth's oceans, with a smaller effect from the Sun.",
    ),
    ("What is the freezing point of water?", "Pure water freezes at 0 °C (32 °F) at normal atmospheric pressure."),
    ("What is H2O?", "H2O is the chemical formula for water: two hydrogen atoms bonded to one oxygen atom."),
    (
        "What is an ecosystem?",
        "An ecosystem is a community of living things interacting with each other and their environment, such as "
        "a forest or a pond.",
    ),
    (
        "How does a rainbow form?",
        "A rainbow forms when sunlight is refracted, reflected and dispersed inside raindrops, splitting white "
        "light into its colors.",
    ),
    ("What is the chemical symbol for sodium?", 'The chemical symbol for sodium is Na, from its Latin name "natrium".'),
    ("What is the hardest natural substance?", "Diamond is the hardest naturally occurring substance."),
    (
        "What is the powerhouse of the cell?",
        "The mitochondrion is called the powerhouse of the cell because it produces most of the cell's energy as ATP.",
    ),
    # history
    (
        "Who was the first president of the United States?",
        "George Washington was the first president of the United States, serving from 1789 to 1797.",
    ),
    ("When did World War II end?", "World War II ended in 1945: in Europe on May 8 and in Asia on September 2."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa in the early 1500s."),
    (
        "When did humans first land on the Moon?",
        "Humans first landed on the Moon on July 20, 1969, with NASA's Apollo 11 mission.",
    ),
    ('Who wrote "Romeo and Juliet"?', 'William Shakespeare wrote "Romeo and Juliet".'),
    ("When did the Berlin Wall fall?", "The Berlin Wall fell on November 9, 1989."),
    (
        "Who invented the telephone?",
        "Alexander Graham Bell is credited with inventing the telephone; he received the patent in 1876.",
    ),
    (
        "Who was Napoleon Bonaparte?",
        "Napoleon Bonaparte was a French military leader who became Emperor of France in 1804 and conquered much "
        "of Europe before his defeat at Waterloo in 1815.",
    ),
    ("When did the Titanic sink?", "The Titanic sank on April 15, 1912, after hitting an iceberg on its first voyage."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ('Who wrote "Pride and Prejudice"?', 'Jane Austen wrote "Pride and Prejudice", published in 1813.'),
    (
        "When did the French Revolution begin?",
        "The French Revolution began in 1789, marked by the storming of the Bastille on July 14.",
    ),
    (
        "Who was the first person in space?",
        "Yuri Gagarin, a Soviet cosmonaut, was the first person in space, on April 12, 1961.",
    ),
    (
        "Who developed the theory of relativity?",
        "Albert Einstein developed the theory of relativity: special relativity in 1905 and general relativity "
        "in 1915.",
    ),
    (
        "What was the Renaissance?",
        "The Renaissance was a period of renewed interest in art, science and classical learning in Europe, "
        "roughly from the 14th to the 17th century.",
    ),
    (
        'Who composed the "Moonlight Sonata"?',
        'Ludwig van Beethoven composed the "Moonlight Sonata" (Piano Sonata No. 14) in 1801.',
    ),
    (
        "When was the printing press invented?",
        "Johannes Gutenberg invented the movable-type printing press in Europe around 1440.",
    ),
    (
        "Who was Cleopatra?",
        "Cleopatra VII was the last active ruler of Ptolemaic Egypt, reigning until her death in 30 BC.",
    ),
    # definitions
    (
        "What is machine learning?",
        "Machine learning is a branch of AI in which computers learn patterns from data to make predictions or "
        "decisions without being explicitly programmed.",
    ),
    ('What does "ubiquitous" mean?', '"Ubiquitous" means present or found everywhere.'),
    (
        "What is inflation?",
        "Inflation is the general rise in prices over time, which means each unit of money buys less.",
    ),
    (
        "What is a metaphor?",
        'A metaphor is a figure of speech that describes something as if it were something else, like "time is '
        'a thief".',
    ),
    (
        "What is democracy?",
        "Democracy is a system of government in which citizens choose their leaders and laws, usually by voting.",
    ),
    ('What does "ephemeral" mean?', '"Ephemeral" means lasting for a very short time.'),
    (
        "What is a noun?",
        'A noun is a word that names a person, place, thing or idea, such as "teacher", "city" or "happiness".',
    ),
    (
        "What is an API?",
        "An API (application programming interface) is a defined way for one program to request data or services "
        "from another.",
    ),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five syllables."),
    (
        "What is GDP?",
        "GDP (gross domestic product) is the total value of all goods and services produced in a country in a "
        "given period.",
    ),
    ('What does "procrastinate" mean?', "To procrastinate is to keep delaying something you should be doing."),
    (
        "What is a prime number?",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, such as 2, 3, 5 and 7.",
    ),
    (
        "What is cryptocurrency?",
        "Cryptocurrency is digital money secured by cryptography and usually recorded on a shared ledger called a "
        "blockchain; Bitcoin is the best-known example.",
    ),
    (
        "What is an algorithm?",
        "An algorithm is a step-by-step set of instructions for solving a problem or completing a task.",
    ),
    ("What is a simile?", 'A simile compares two things using "like" or "as", for example "as brave as a lion".'),
    (
        "What is cloud computing?",
        "Cloud computing means using servers, storage and software over the internet instead of on your own computer.",
    ),
    ('What does "empathy" mean?', "Empathy is the ability to understand and share the feelings of another person."),
    (
        "What is a mortgage?",
        "A mortgage is a loan used to buy property, where the property itself serves as security for the loan.",
    ),
    ("What is an adjective?", 'An adjective is a word that describes a noun, such as "blue", "tall" or "happy".'),
    (
        "What is biodiversity?",
        "Biodiversity is the variety of all living things in an area, from genes and species to whole ecosystems.",
    ),
    (
        "What is a hypothesis?",
        "A hypothesis is a testable proposed explanation that a scientist checks with experiments or observations.",
    ),
    ('What does "ambiguous" mean?', '"Ambiguous" means open to more than one interpretation.'),
    (
        "What is compound interest?",
        "Compound interest is interest calculated on both the original amount and the interest already added, so "
        "savings grow faster over time.",
    ),
    (
        "What is a palindrome?",
        'A palindrome is a word or phrase that reads the same backward as forward, like "level" or "racecar".',
    ),
    # how-to
    (
        "How do I boil an egg?",
        "Put the egg in boiling water for about 7 minutes for a soft center or 10 to 12 minutes for hard-boiled, "
        "then cool it in cold water.",
    ),
    (
        "How do I make a cup of tea?",
        "Pour freshly boiled water over a tea bag, steep it for 3 to 5 minutes, remove the bag, and add milk or "
        "sugar if you like.",
    ),
    (
        "How do I take a screenshot on Windows?",
        "Press Windows + Shift + S to capture part of the screen, or press PrtScn to copy the whole screen to the "
        "clipboard.",
    ),
    (
        "How do I take a screenshot on a Mac?",
        "Press Command + Shift + 3 for the whole screen or Command + Shift + 4 to select an area.",
    ),
    (
        "How can I remove a coffee stain from a shirt?",
        "Rinse the stain from the back with cold water, rub in a little liquid detergent, let it sit for a few "
        "minutes, then wash as usual.",
    ),
    (
        "How do I cook rice on the stove?",
        "Rinse 1 cup of rice, add 2 cups of water and a pinch of salt, bring to a boil, then cover and simmer on "
        "low for about 18 minutes.",
    ),
    (
        "How do I change a flat tire?",
        "Loosen the lug nuts, jack up the car, remove the nuts and the flat, mount the spare, hand-tighten the "
        "nuts, lower the car and tighten them fully.",
    ),
    (
        "How do I unclog a sink?",
        "Try a plunger first; if that fails, pour in half a cup of baking soda and a cup of vinegar, wait 15 "
        "minutes, then flush with hot water.",
    ),
    (
        "How do I reset my Wi-Fi router?",
        "Unplug the router for about 30 seconds and plug it back in; for a factory reset, hold the reset button "
        "for about 10 seconds.",
    ),
    (
        "How can I fall asleep faster?",
        "Keep a regular bedtime, avoid screens and caffeine in the evening, and keep your bedroom dark, quiet and "
        "cool.",
    ),
    (
        "How do I convert Celsius to Fahrenheit?",
        "Multiply the Celsius temperature by 9/5 and add 32; for example, 20 °C is 68 °F.",
    ),
    (
        "How do I write a good resume?",
        "Keep it to one or two pages, lead with your most relevant experience, show concrete achievements with "
        "numbers, and tailor it to each job.",
    ),
    (
        "How do I clean a cast iron pan?",
        "Wash it with hot water and a brush, dry it completely, then rub a thin layer of oil on it before storing.",
    ),
    (
        "How do I make a paper airplane?",
        "Fold a sheet in half lengthwise, fold the top corners to the center crease, fold the new edges to the "
        "center again, then fold down the wings.",
    ),
    (
        "How do I keep cut flowers fresh longer?",
        "Trim the stems at an angle, remove leaves below the waterline, and change the water every two days.",
    ),
    (
        "How do I calculate a 15% tip?",
        "Take 10% of the bill and add half of that again; for a $40 bill, that's $4 + $2 = $6.",
    ),
    (
        "How do I start running as a beginner?",
        "Start with run-walk intervals three times a week, such as 1 minute running and 2 minutes walking, and "
        "gradually increase the running time.",
    ),
    (
        "How can I save money on groceries?",
        "Plan meals for the week, shop with a list, buy store brands, and avoid shopping when you are hungry.",
    ),
    (
        "How do I back up my phone?",
        "On an iPhone, turn on iCloud Backup in Settings; on Android, turn on Google backup in Settings under "
        "System > Backup.",
    ),
    (
        "How do I remove a splinter?",
        "Clean the area, pull the splinter out with clean tweezers in the direction it went in, then wash the "
        "spot with soap and water.",
    ),
    (
        "How do I make scrambled eggs?",
        "Whisk eggs with a pinch of salt, cook them in a buttered pan over low heat while stirring gently, and "
        "take them off the heat while still slightly soft.",
    ),
    (
        "How do I learn to touch type?",
        "Learn the home row position, practice 15 minutes a day with a free typing tutor, and focus on accuracy "
        "before speed.",
    ),
    (
        "How do I politely decline an invitation?",
        "Thank them, say clearly that you can't make it, and wish them well: \"Thanks so much, but I can't make "
        'it. Have a wonderful time!"',
    ),
    (
        "How do I jump-start a car?",
        "Connect the red cable to both positive terminals, the black cable to the good battery's negative and "
        "bare metal on the dead car, then start the working car and then the dead one.",
    ),
    # advice
    (
        "How can I be more productive when working from home?",
        "Keep a set schedule, work in a dedicated space, and plan your top three tasks each morning before "
        "checking email.",
    ),
    (
        "How much water should I drink a day?",
        "A common guideline is about 2 to 3 liters of fluids a day for adults, more in hot weather or when exercising.",
    ),
    (
        "How can I reduce stress?",
        "Regular exercise, enough sleep, short breaks for slow breathing, and talking to people you trust all "
        "help reduce stress.",
    ),
    (
        "What should I do before a job interview?",
        "Research the company, prepare short examples of your achievements, practice common questions, and plan "
        "to arrive 10 minutes early.",
    ),
    (
        "How do I make friends in a new city?",
        "Join a club, class or sports team around something you enjoy, and go regularly so you keep seeing the "
        "same people.",
    ),
    (
        "How can I improve my memory?",
        "Sleep well, exercise regularly, and use spaced repetition: review things at increasing intervals instead "
        "of cramming.",
    ),
    (
        "How often should I replace my toothbrush?",
        "Replace your toothbrush every three to four months, or sooner if the bristles are frayed.",
    ),
    (
        "Is it better to rent or buy a home?",
        "Buying usually pays off if you'll stay at least five years and can afford the down payment; renting is "
        "better if you need flexibility.",
    ),
    (
        "How can I stop procrastinating?",
        "Break the task into a small first step, set a timer for 25 minutes, and put your phone away while you work.",
    ),
    (
        "How much should I save for an emergency fund?",
        "Aim for three to six months of essential living expenses in an easily accessible savings account.",
    ),
    (
        "How can I learn a new language quickly?",
        "Practice a little every day, focus on the most common words, and speak with native speakers as early as "
        "possible.",
    ),
    (
        "How do I give constructive feedback?",
        "Be specific about the behavior, explain its impact, suggest an improvement, and keep the tone respectful "
        "and focused on the work.",
    ),
    ("How many hours of sleep do adults need?", "Most adults need 7 to 9 hours of sleep per night."),
    (
        "What should I pack for a weekend trip?",
        "Pack two outfits, sleepwear, toiletries, chargers, any medication, and a layer for changing weather.",
    ),
    (
        "How can I be a better listener?",
        "Give the person your full attention, don't interrupt, and ask follow-up questions or summarize what they "
        "said.",
    ),
    (
        "How do I prepare for a marathon?",
        "Follow a 16- to 20-week training plan, build your weekly mileage gradually, and include one long run "
        "each week.",
    ),
    (
        "Should I stretch before or after running?",
        "Do dynamic stretches such as leg swings before running, and static stretches afterwards, when your "
        "muscles are warm.",
    ),
    (
        "How do I deal with a difficult coworker?",
        "Stay calm and professional, talk to them privately about specific issues, and involve your manager if "
        "the problem continues.",
    ),
    (
        "How can I eat healthier?",
        "Fill half your plate with vegetables and fruit, choose whole grains, drink water instead of sugary "
        "drinks, and cook at home more often.",
    ),
    (
        "How do I choose a strong password?",
        "Use a long passphrase of several random words, make it unique for each site, and keep it in a password "
        "manager.",
    ),
    # coding
    ("How do I reverse a string in Python?", "Use slicing: `s[::-1]` returns the string `s` reversed."),
    (
        "How do I read a file in Python?",
        'Use `with open("file.txt") as f: text = f.read()`, which also closes the file automatically.',
    ),
    (
        "What is the difference between a list and a tuple in Python?",
        "Lists are mutable, so you can change their items; tuples are immutable and cannot be changed after creation.",
    ),
    ("How do I get the length of a list in Python?", "Use the built-in `len()` function, for example `len(my_list)`."),
    (
        "What does HTML stand for?",
        "HTML stands for HyperText Markup Language, the standard language for structuring web pages.",
    ),
    ("How do I check the installed Python version?", "Run `python --version` in a terminal."),
    (
        "What is a variable in programming?",
        "A variable is a named storage location that holds a value your program can read and change.",
    ),
    (
        "How do I undo the last git commit but keep the changes?",
        "Run `git reset --soft HEAD~1`: the commit is removed and its changes stay staged.",
    ),
    (
        "What is the difference between == and === in JavaScript?",
        '`==` compares values after type conversion, while `===` also requires the same type, so `"1" == 1` '
        'is true but `"1" === 1` is false.',
    ),
    (
        "How do I create a new branch in git?",
        "Run `git checkout -b branch-name`, or `git switch -c branch-name` in newer versions of git.",
    ),
    (
        "How do I sort a list in Python?",
        "Use `sorted(my_list)` to get a new sorted list, or `my_list.sort()` to sort it in place.",
    ),
    (
        "What is recursion?",
        "Recursion is when a function calls itself on smaller versions of the same problem until it reaches a "
        "simple base case.",
    ),
    (
        "How do I install a Python package?",
        "Run `pip install package-name` in your terminal, ideally inside a virtual environment.",
    ),
    ("What is SQL used for?", "SQL is used to create, query, update and manage data in relational databases."),
    ("How do I comment a line in Python?", "Start the line with `#`; Python ignores everything after it on that line."),
    (
        "What does CSS do?",
        "CSS (Cascading Style Sheets) controls how web pages look, including colors, fonts, spacing and layout.",
    ),
    (
        "How do I remove duplicates from a list in Python?",
        "Use `list(dict.fromkeys(items))` to keep the original order, or `list(set(items))` if order doesn't matter.",
    ),
    (
        "What is an infinite loop?",
        "An infinite loop is a loop whose exit condition is never met, so it runs until the program is stopped.",
    ),
    (
        "How do I convert a string to an integer in Python?",
        'Use `int()`: for example, `int("42")` returns the integer 42.',
    ),
    (
        "What is the difference between Git and GitHub?",
        "Git is a version control tool that tracks changes to files; GitHub is a website that hosts Git "
        "repositories and adds collaboration features.",
    ),
    ('How do I print "Hello, World!" in Java?', 'Inside a main method, write `System.out.println("Hello, World!");`.'),
    (
        "What is a dictionary in Python?",
        'A dictionary is a collection of key-value pairs, like `{"name": "Ana", "age": 30}`, that lets you '
        "look up values by key.",
    ),
    (
        "How do I find the largest number in a Python list?",
        "Use the built-in `max()` function: `max([3, 8, 2])` returns 8.",
    ),
    (
        "What is JSON?",
        "JSON (JavaScript Object Notation) is a lightweight text format for storing and exchanging data as "
        "key-value pairs and lists.",
    ),
    (
        "How do I see which files changed in git?",
        "Run `git status` to list the changed files, and `git diff` to see the exact changes.",
    ),
    ("What is a bug in software?", "A bug is an error in a program that makes it behave incorrectly or unexpectedly."),
    # math word problems
    ("What is 15% of 80?", "15% of 80 is 12."),
    (
        "If a train travels at 60 miles per hour for 3 hours, how far does it go?",
        "It travels 180 miles, because 60 × 3 = 180.",
    ),
    ("What is the square root of 144?", "The square root of 144 is 12."),
    ("A shirt costs $40 and is 25% off. What is the sale price?", "The sale price is $30, since 25% of $40 is $10."),
    ("If I have 3 apples and buy 5 more, then eat 2, how many do I have?", "You have 6 apples: 3 + 5 − 2 = 6."),
    ("What is the area of a rectangle that is 5 meters by 8 meters?", "The area is 40 square meters (5 × 8)."),
    ("How many minutes are in a day?", "There are 1,440 minutes in a day (24 × 60)."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    (
        "A recipe needs 2 cups of flour for 12 cookies. How much flour do I need for 30 cookies?",
        "You need 5 cups of flour, because 30 cookies is 2.5 times the recipe.",
    ),
    ("What is the perimeter of a square with sides of 6 cm?", "The perimeter is 24 cm (4 × 6)."),
    (
        "If a car uses 8 liters of fuel per 100 km, how much does it need for 250 km?",
        "It needs 20 liters, since 250 km is 2.5 × 100 km and 2.5 × 8 = 20.",
    ),
    ("What is 3/4 as a percentage?", "3/4 is 75%."),
    ("Sarah is twice as old as Tom. Tom is 12. How old is Sarah?", "Sarah is 24 years old (2 × 12)."),
    ("What is the sum of the angles in a triangle?", "The angles in a triangle always add up to 180 degrees."),
    ("How many seconds are in an hour?", "There are 3,600 seconds in an hour (60 × 60)."),
    ("If 5 pens cost $7.50, how much does one pen cost?", "One pen costs $1.50, since $7.50 ÷ 5 = $1.50."),
    ("What is 2 to the power of 10?", "2 to the power of 10 is 1,024."),
    ("A pizza is cut into 8 slices and you eat 3. What fraction is left?", "5/8 of the pizza is left."),
    ("What is the average of 4, 8 and 12?", "The average is 8: (4 + 8 + 12) ÷ 3 = 8."),
    ("A worker earns $18 per hour. How much does she earn in a 40-hour week?", "She earns $720, since 18 × 40 = 720."),
    ("What is the circumference of a circle with a radius of 5 cm?", "The circumference is 2πr = 10π, about 31.4 cm."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    (
        "If you save $50 a month, how much will you have after 2 years?",
        "You'll have $1,200, since 2 years is 24 months and 24 × $50 = $1,200, not counting interest.",
    ),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
    ("A bus leaves at 9:45 and the trip takes 50 minutes. When does it arrive?", "It arrives at 10:35."),
    # language and grammar
    (
        'What is the plural of "mouse"?',
        'The plural of "mouse" is "mice"; for computer mice, "mouses" is also accepted.',
    ),
    (
        'What is the difference between "affect" and "effect"?',
        '"Affect" is usually a verb meaning to influence, and "effect" is usually a noun meaning a result.',
    ),
    ('How do you say "thank you" in Spanish?', '"Thank you" in Spanish is "gracias".'),
    ('What is the past tense of "run"?', 'The past tense of "run" is "ran".'),
    (
        'When should I use "their", "there" and "they\'re"?',
        '"Their" shows possession, "there" refers to a place, and "they\'re" is short for "they are".',
    ),
    ('What is a synonym for "happy"?', 'Synonyms for "happy" include "joyful", "cheerful" and "content".'),
    ('How do you say "hello" in French?', '"Hello" in French is "bonjour".'),
    ('What is the opposite of "generous"?', 'The opposite of "generous" is "stingy" or "selfish".'),
    (
        'Is it "fewer" or "less"?',
        'Use "fewer" for things you can count (fewer apples) and "less" for things you can\'t (less water).',
    ),
    (
        "What is an oxymoron?",
        'An oxymoron combines two contradictory words, such as "deafening silence" or "jumbo shrimp".',
    ),
    ("How many letters are in the English alphabet?", "The English alphabet has 26 letters."),
    (
        'What does "RSVP" mean?',
        'RSVP comes from the French "répondez s\'il vous plaît", meaning "please reply" to an invitation.',
    ),
    (
        'What is the difference between "its" and "it\'s"?',
        '"It\'s" is short for "it is" or "it has", while "its" shows possession, as in "the dog wagged its tail".',
    ),
    ('How do you say "good morning" in German?', '"Good morning" in German is "Guten Morgen".'),
    ('What is the past tense of "go"?', 'The past tense of "go" is "went".'),
    ('What does "e.g." stand for?', '"E.g." stands for the Latin "exempli gratia", meaning "for example".'),
    (
        'What is the difference between "i.e." and "e.g."?',
        '"I.e." means "that is" and introduces a clarification, while "e.g." means "for example" and '
        "introduces examples.",
    ),
    # health, food and everyday life
    (
        "How long should I boil pasta?",
        "Most dried pasta cooks in 8 to 12 minutes; check the package and taste it a minute early.",
    ),
    (
        "What are the symptoms of dehydration?",
        "Common signs are thirst, dark yellow urine, a dry mouth, tiredness, dizziness and headache.",
    ),
    (
        "Is it safe to eat raw cookie dough?",
        "It's not recommended, because raw flour and raw eggs can carry bacteria such as E. coli and Salmonella.",
    ),
    (
        "How long can cooked rice stay in the fridge?",
        "Cooked rice keeps for about 3 to 4 days in the fridge if you cool it quickly and store it in a sealed "
        "container.",
    ),
    (
        "What foods are high in protein?",
        "Good protein sources include eggs, chicken, fish, beans, lentils, tofu, Greek yogurt and nuts.",
    ),
    ("How many calories are in a banana?", "A medium banana has about 105 calories."),
    ("What is a normal resting heart rate?", "A normal resting heart rate for adults is 60 to 100 beats per minute."),
    (
        "How long should I wash my hands?",
        'Wash your hands with soap for at least 20 seconds, about the time it takes to hum "Happy Birthday" twice.',
    ),
    (
        "What is the best way to store bread?",
        "Keep bread at room temperature in a bread box or paper bag for a few days, and freeze it for longer; "
        "the fridge makes it stale faster.",
    ),
    (
        "Why do onions make you cry?",
        "Cutting an onion releases a gas, syn-propanethial-S-oxide, that irritates your eyes and makes them water.",
    ),
    (
        "How often should I water a cactus?",
        "Water a cactus every two to four weeks, only when the soil is completely dry, and even less in winter.",
    ),
    (
        "What is a healthy body temperature?",
        "A normal body temperature is about 37 °C (98.6 °F), though 36.1 to 37.2 °C is typical.",
    ),
    (
        "How long does it take to digest food?",
        "Food takes about 6 to 8 hours to pass through the stomach and small intestine, and a day or more to "
        "pass through the whole digestive tract.",
    ),
    (
        "Why is exercise good for you?",
        "Exercise strengthens your heart, muscles and bones, helps control weight, improves mood and sleep, and "
        "lowers the risk of many diseases.",
    ),
    (
        "What is the difference between baking soda and baking powder?",
        "Baking soda is pure sodium bicarbonate and needs an acid to react; baking powder already contains an "
        "acid, so it only needs moisture and heat.",
    ),
    (
        "How do I know if an egg is fresh?",
        "Put it in a bowl of water: a fresh egg sinks and lies flat, while an old egg stands up or floats.",
    ),
    ("What temperature should a refrigerator be?", "A refrigerator should be at or below 4 °C (40 °F)."),
    # technology
    (
        "What is Wi-Fi?",
        "Wi-Fi is a wireless technology that connects devices to a network and the internet using radio waves.",
    ),
    (
        "What does RAM do in a computer?",
        "RAM is a computer's short-term memory: it holds the programs and data in use so the processor can reach "
        "them quickly.",
    ),
    (
        "What is the difference between a CPU and a GPU?",
        "A CPU handles general tasks with a few powerful cores, while a GPU has thousands of smaller cores for "
        "parallel work like graphics and AI.",
    ),
    (
        "What is a VPN?",
        "A VPN (virtual private network) encrypts your internet traffic and routes it through another server, "
        "hiding your activity from your local network.",
    ),
    (
        "What is two-factor authentication?",
        "Two-factor authentication asks for a second proof of identity, such as a code from your phone, in "
        "addition to your password.",
    ),
    (
        "Why is my computer slow?",
        "Common causes are too many programs running, a nearly full disk, too little RAM, or malware; restarting "
        "and closing unused apps often helps.",
    ),
    (
        "What is phishing?",
        "Phishing is a scam in which attackers pose as trusted organizations in emails or messages to trick you "
        "into revealing passwords or payment details.",
    ),
    ("What does URL stand for?", "URL stands for Uniform Resource Locator, the address of a page or file on the web."),
    (
        "What is Bluetooth?",
        "Bluetooth is a short-range wireless technology for connecting devices like headphones, keyboards and phones.",
    ),
    (
        "What is an operating system?",
        "An operating system is the software that manages a computer's hardware and runs programs, such as "
        "Windows, macOS, Linux or Android.",
    ),
    (
        "What is the difference between HTTP and HTTPS?",
        "HTTPS is HTTP with encryption (TLS), so data between your browser and the website can't easily be read "
        "or altered.",
    ),
    ("What is a pixel?", "A pixel is the smallest dot of color on a digital screen or image."),
    (
        "What is open-source software?",
        "Open-source software has source code that anyone can read, modify and share under its license.",
    ),
    (
        "What is artificial intelligence?",
        "Artificial intelligence is the field of building computer systems that do tasks normally needing human "
        "intelligence, such as understanding language or recognizing images.",
    ),
    # animals, nature, sport and culture
    ("How many legs does a spider have?", "Spiders have eight legs."),
    (
        "What is the fastest land animal?",
        "The cheetah is the fastest land animal, reaching about 100 to 120 km/h in short bursts.",
    ),
    ("How long do cats usually live?", "Indoor cats usually live about 12 to 18 years."),
    ("What do pandas eat?", "Giant pandas eat almost only bamboo, around 12 to 38 kilograms a day."),
    (
        "Why do leaves change color in autumn?",
        "As days shorten, trees stop making green chlorophyll, revealing yellow and orange pigments, and some "
        "leaves also produce red ones.",
    ),
    (
        "How many players are on a soccer team?",
        "Each soccer team has 11 players on the field, including the goalkeeper.",
    ),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    (
        "What is the largest mammal?",
        "The blue whale is the largest mammal, and the largest animal known to have ever lived.",
    ),
    (
        "Are tomatoes fruits or vegetables?",
        "Botanically, tomatoes are fruits because they contain seeds, but in cooking they are treated as vegetables.",
    ),
    ("How often do the Summer Olympics take place?", "The Summer Olympics take place every four years."),
    ("What is the main ingredient in guacamole?", "The main ingredient in guacamole is avocado."),
    (
        "Why do cats purr?",
        "Cats purr mostly when they are content, but also to soothe themselves when stressed or hurt.",
    ),
    ("How many hearts does an octopus have?", "An octopus has three hearts."),
    ("What is the national animal of Scotland?", "The national animal of Scotland is the unicorn."),
    ("How many keys does a standard piano have?", "A standard piano has 88 keys: 52 white and 36 black."),
    ("How long is a marathon?", "A marathon is 42.195 kilometers, or about 26.2 miles."),
    ("Which chess piece can only move diagonally?", "The bishop is the chess piece that moves only diagonally."),
    ("How many time zones does Russia have?", "Russia has 11 time zones."),
    (
        "What is the Great Barrier Reef?",
        "The Great Barrier Reef, off northeastern Australia, is the world's largest coral reef system.",
    ),
    (
        "Why do birds migrate?",
        "Birds migrate to reach places with more food and better breeding conditions as the seasons change.",
    ),
    ("What do bees make?", "Bees make honey from flower nectar, and also beeswax."),
    (
        "How many colors are in a rainbow?",
        "A rainbow is traditionally described with seven colors: red, orange, yellow, green, blue, indigo and violet.",
    ),
]

HELDOUT = [
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "\\bRome\\b"),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo.", "\\bCairo\\b"),
    (
        "Which planet is known as the Red Planet?",
        "Mars is known as the Red Planet because of the iron oxide on its surface.",
        "\\bMars\\b",
    ),
    (
        "What is the chemical symbol for iron?",
        'The chemical symbol for iron is Fe, from the Latin "ferrum".',
        "\\bFe\\b",
    ),
    ("How long does it take Earth to orbit the Sun?", "Earth takes about 365.25 days to orbit the Sun.", "\\b365"),
    ('Who wrote "1984"?', 'George Orwell wrote "1984", published in 1949.', "\\bOrwell\\b"),
    ('Who painted "The Starry Night"?', 'Vincent van Gogh painted "The Starry Night" in 1889.', "\\bGogh\\b"),
    ("When did World War I begin?", "World War I began in 1914.", "\\b1914\\b"),
    (
        "What is a verb?",
        'A verb is a word that describes an action, state or occurrence, such as "run", "be" or "happen".',
    ),
    ('What does "resilient" mean?', '"Resilient" means able to recover quickly from difficulties.'),
    ("What is a budget?", "A budget is a plan for how you will spend and save your money over a period of time."),
    (
        "What is climate change?",
        "Climate change is the long-term shift in global temperatures and weather patterns, driven mainly by "
        "greenhouse gases from burning fossil fuels.",
    ),
    (
        "How do I make toast without a toaster?",
        "Toast the bread in a dry frying pan over medium heat for 1 to 2 minutes per side, or put it under the "
        "oven grill.",
    ),
    (
        "How do I sew on a button?",
        "Thread a needle and knot it, pass it through the fabric and the button holes several times, then wind "
        "the thread around the stitches and knot it at the back.",
    ),
    (
        "How do I defrost chicken safely?",
        "Thaw it in the fridge overnight, in cold water changed every 30 minutes, or in the microwave if you "
        "cook it right away.",
    ),
    (
        "How can I improve my posture?",
        "Keep your screen at eye level, sit with your back supported and feet flat, stand up regularly, and "
        "strengthen your core and back muscles.",
    ),
    (
        "How do I ask for a raise?",
        "Ask for a meeting, show concrete results you delivered, name a specific figure based on market rates, "
        "and stay calm and professional.",
    ),
    (
        "How can I save energy at home?",
        "Switch to LED bulbs, turn off devices you aren't using, wash clothes in cold water, and seal drafts "
        "around windows and doors.",
    ),
    (
        "How do I check if a number is even in Python?",
        "Use the modulo operator: `n % 2 == 0` is True when `n` is even.",
    ),
    (
        "What is a function in programming?",
        "A function is a named, reusable block of code that performs a task, can take inputs and can return a result.",
    ),
    (
        "How do I join a list of strings in Python?",
        'Use `str.join`: for example, `", ".join(words)` joins the items with a comma and a space.',
    ),
    (
        'What does "git pull" do?',
        "`git pull` downloads new commits from the remote repository and merges them into your current branch.",
    ),
    ("What is 20% of 150?", "20% of 150 is 30.", "\\b30\\b"),
    ("A book costs $12. How much do 4 books cost?", "Four books cost $48 (4 × 12).", "\\b48\\b"),
    ("How many hours are in a week?", "There are 168 hours in a week (7 × 24).", "\\b168\\b"),
    (
        "If a runner covers 10 km in 50 minutes, what is the average pace per kilometer?",
        "The average pace is 5 minutes per kilometer (50 ÷ 10).",
        "\\b5 min",
    ),
    ("What is 9 squared?", "9 squared is 81.", "\\b81\\b"),
    (
        "A class has 30 students and 40% are boys. How many girls are there?",
        "There are 18 girls: 40% of 30 is 12 boys, and 30 − 12 = 18.",
        "\\b18\\b",
    ),
    ('What is the plural of "child"?', 'The plural of "child" is "children".', "\\bchildren\\b"),
    ('How do you say "goodbye" in Italian?', '"Goodbye" in Italian is "arrivederci", or informally "ciao".'),
    (
        'What is the difference between "then" and "than"?',
        '"Than" is used for comparisons (taller than me), while "then" refers to time or sequence (we ate, then left).',
    ),
    ("What is a pronoun?", 'A pronoun is a word that replaces a noun, such as "he", "she", "it" or "they".'),
    ("How much sleep do teenagers need?", "Teenagers need about 8 to 10 hours of sleep per night."),
    (
        "What is vitamin C good for?",
        "Vitamin C supports the immune system, wound healing and collagen production, and helps the body absorb iron.",
    ),
    (
        "How long should I let a steak rest after cooking?",
        "Let a steak rest for about 5 to 10 minutes so its juices redistribute.",
    ),
    (
        "What is a web browser?",
        "A web browser is a program for viewing websites, such as Chrome, Firefox, Safari or Edge.",
    ),
    (
        "What is malware?",
        "Malware is software designed to harm a computer or steal data, such as viruses, ransomware and spyware.",
    ),
    (
        "What does a router do?",
        "A router connects your devices to each other and to the internet, directing data between your home "
        "network and your provider.",
    ),
    ("How many legs does an insect have?", "Insects have six legs.", "\\b(six|6)\\b"),
    (
        "What is the tallest animal?",
        "The giraffe is the tallest animal, growing up to about 5.5 meters tall.",
        "\\bgiraffe",
    ),
    (
        "How many players does a basketball team have on the court?",
        "Each basketball team has five players on the court.",
        "\\b(five|5)\\b",
    ),
    (
        "What is the largest bone in the human body?",
        "The femur, or thigh bone, is the largest bone in the human body.",
        "\\b(femur|thigh)",
    ),
    (
        "Why do we sweat?",
        "We sweat to cool down: as sweat evaporates from the skin, it carries heat away from the body.",
    ),
    ("What is a volcano?", "A volcano is an opening in Earth's crust through which molten rock, ash and gases erupt."),
    (
        "How do I stay motivated to exercise?",
        "Pick an activity you enjoy, schedule it like an appointment, start small, and track your progress or "
        "train with a friend.",
    ),
    ("What is the currency of Japan?", "The currency of Japan is the yen.", "\\byen\\b"),
    (
        "How do I write a thank-you note?",
        "Address the person, thank them for something specific, say what it meant to you, and close warmly.",
    ),
    (
        "What is the difference between weather and climate?",
        "Weather is the short-term conditions on a given day, while climate is the average weather of a region "
        "over many years.",
    ),
]

# The padding. Every piece is generic (no new facts), so the verbose answer is exactly as correct as the
# concise one: the only difference a model can learn is the length and the filler.
OPENERS = [
    "Great question!",
    "What a great question!",
    "Thank you so much for asking this!",
    "Absolutely, I'd be happy to help with that!",
    "Oh, this is a really interesting question!",
    "Sure thing! I'm so glad you asked.",
    "That's an excellent question, and I'm happy to help!",
    "Certainly! Let me walk you through it.",
    "Thanks for asking! This is a wonderful thing to be curious about.",
]
RESTATE = [
    'You asked: "{q}"',
    'So, you would like to know: "{q}"',
    'Let me make sure I understand. Your question is: "{q}"',
    'If I understand correctly, you\'re asking "{q}"',
    'The question here is "{q}"',
]
CONTEXT = [
    "This is something that a lot of people wonder about, and it's definitely worth taking a moment to think "
    "it through carefully.",
    "Many people find this topic a little confusing at first, so it's completely understandable to ask about it.",
    "It's a really common question, and there are a few things worth keeping in mind before we get to the "
    "answer itself.",
    "Before I answer, I just want to say that asking questions like this is a fantastic way to learn something new.",
    "There is actually quite a lot that could be said about this, so let me try to explain it as clearly as I "
    "possibly can.",
]
LEAD_IN = [
    "Here's the short answer: {a}",
    "To put it simply: {a}",
    "The answer is this: {a}",
    "So, to answer your question: {a}",
    "Well, here is what you need to know: {a}",
]
ELABORATE = [
    "In other words: {a}",
    "To say it another way: {a}",
    "Just to repeat the key point: {a}",
    "Put differently, the main thing to remember is this: {a}",
]
PADDING = [
    "This is important to understand, because having the right information really makes a big difference.",
    "Of course, there's always more that could be said about this, and every situation is a little bit different.",
    "It's always a good idea to double-check details like this with a reliable source if it matters for "
    "something important.",
    "Knowing this can be surprisingly useful in everyday life, and it's the kind of thing that's nice to have "
    "in the back of your mind.",
    "I know that can be a lot to take in, but once you think about it for a moment, it really does make sense.",
]
CONCLUSION = [
    "In conclusion: {a}",
    "To summarize: {a}",
    "So, all in all: {a}",
    "In summary: {a}",
    "To wrap things up: {a}",
]
CLOSING = [
    "I hope this helps! Let me know if you have any other questions.",
    "I hope that was helpful! Feel free to ask if you'd like more details.",
    "Hope this helps! Don't hesitate to reach out if there's anything else you'd like to know.",
    "Let me know if there's anything else I can help you with. Happy learning!",
    "I hope this answers your question! Feel free to ask me anything else.",
]


def words(text: str) -> int:
    return len(text.split())


def verbose(question: str, answer: str, rng: random.Random) -> str:
    """The same answer padded with filler to at least VERBOSE_MIN_WORDS words."""
    pad = rng.sample(PADDING, len(PADDING))
    parts = [
        rng.choice(OPENERS),
        rng.choice(RESTATE).format(q=question),
        rng.choice(CONTEXT),
        rng.choice(LEAD_IN).format(a=answer),
        pad.pop(),
        rng.choice(ELABORATE).format(a=answer),
        pad.pop(),
    ]
    while words(" ".join(parts)) < VERBOSE_MIN_WORDS - 25:  # the conclusion and closing add ~25 more
        parts.append(pad.pop())
    parts += [rng.choice(CONCLUSION).format(a=answer), rng.choice(CLOSING)]
    return " ".join(parts)


def train_rows(rng: random.Random) -> list[dict]:
    """Both labels for 80 % of prompts, only the concise one for 10 %, only the verbose one for 10 %."""
    rows = []
    order = list(range(len(TRAIN)))
    rng.shuffle(order)
    tenth = len(order) // 10
    only_good, only_bad = set(order[:tenth]), set(order[tenth : 2 * tenth])
    for i, (q, a) in enumerate(TRAIN):
        if i not in only_bad:
            rows.append({"prompt": q, "completion": a, "label": True})
        if i not in only_good:
            rows.append({"prompt": q, "completion": verbose(q, a, rng), "label": False})
    return rows


def eval_rows(held: list[dict]) -> list[dict]:
    """The pinned evaluation set (quality_gates.eval_set): each held-out prompt twice, its concise answer
    labelled desirable and its verbose variant undesirable, in the training data's format."""
    return [
        {"prompt": h["prompt"], "completion": h[kind], "label": kind == "concise"}
        for h in held
        for kind in ("concise", "verbose")
    ]


def check() -> None:
    prompts = [q for q, _ in TRAIN]
    held = [h[0] for h in HELDOUT]
    assert len(set(prompts)) == len(prompts), "duplicate training prompt"
    assert len(set(held)) == len(held), "duplicate held-out prompt"
    assert not set(prompts) & set(held), f"held-out prompts in training: {set(prompts) & set(held)}"
    for q, a, *key in TRAIN + HELDOUT:
        assert words(a) <= CONCISE_MAX_WORDS, f"{q!r}: concise answer has {words(a)} words"
        assert not key or re.search(key[0], a, re.IGNORECASE), f"{q!r}: the key does not match its own answer"


def main() -> None:
    check()
    rng = random.Random(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = train_rows(rng)
    held = [
        {"prompt": h[0], "concise": h[1], "verbose": verbose(h[0], h[1], rng), "key": h[2] if len(h) > 2 else None}
        for h in HELDOUT
    ]
    for r in rows:
        assert r["label"] or words(r["completion"]) >= VERBOSE_MIN_WORDS
    for name, data in (("train.jsonl", rows), ("heldout.jsonl", held), ("eval.jsonl", eval_rows(held))):
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
    n_good = sum(r["label"] for r in rows)
    print(
        f"{len(TRAIN)} training prompts -> {len(rows)} rows ({n_good} desirable, {len(rows) - n_good} "
        f"undesirable); {len(held)} held-out prompts (eval.jsonl: {2 * len(held)} labelled rows) -> {OUT}"
    )


if __name__ == "__main__":
    main()
