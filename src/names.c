/* names.c - anonymous display names and colours. */
#include "stoa/names.h"
#include "stoa/util.h"

#include <stdio.h>

static const char *const adjectives[] = {
    "Amber", "Brave", "Bright", "Calm", "Clever", "Cosmic", "Curious", "Daring", "Dazzling",
    "Eager", "Electric", "Fancy", "Fearless", "Fluffy", "Gentle", "Gleeful", "Golden",
    "Happy", "Humble", "Jolly", "Keen", "Kind", "Lively", "Lucky", "Lunar", "Mellow",
    "Merry", "Mighty", "Misty", "Neon", "Nimble", "Noble", "Plucky", "Polite", "Quick",
    "Quiet", "Radiant", "Rapid", "Rustic", "Silent", "Silver", "Sleepy", "Sly", "Snowy",
    "Solar", "Sparkling", "Speedy", "Spry", "Stellar", "Sunny", "Swift", "Tidy", "Velvet",
    "Vivid", "Wandering", "Whimsical", "Witty", "Zesty",
};

static const char *const animals[] = {
    "Aardvark", "Albatross", "Alpaca", "Axolotl", "Badger", "Beaver", "Bison", "Capybara",
    "Caracal", "Chameleon", "Cheetah", "Chinchilla", "Cormorant", "Coyote", "Dingo", "Dolphin",
    "Dormouse", "Eagle", "Echidna", "Falcon", "Ferret", "Flamingo", "Gazelle", "Gecko",
    "Gibbon", "Heron", "Hedgehog", "Ibex", "Iguana", "Jackal", "Jaguar", "Kingfisher",
    "Koala", "Lemur", "Lynx", "Manatee", "Marmot", "Meerkat", "Mongoose", "Narwhal",
    "Ocelot", "Okapi", "Otter", "Pangolin", "Pelican", "Penguin", "Puffin", "Quokka",
    "Raccoon", "Salamander", "Seal", "Tapir", "Toucan", "Walrus", "Wombat", "Yak", "Zebra",
};

/* Distinct, readable on white and on dark backgrounds. */
static const char *const colors[] = {
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#469990", "#9a6324", "#800000", "#808000", "#000075", "#e6a100", "#2e8b57",
    "#c71585", "#1e90ff",
};

void stoa_names_anonymous(char name[STOA_NAME_MAX], char color[STOA_COLOR_LEN])
{
    const char *adj = adjectives[stoa_random_below(STOA_ARRAY_LEN(adjectives))];
    const char *ani = animals[stoa_random_below(STOA_ARRAY_LEN(animals))];
    snprintf(name, STOA_NAME_MAX, "%s %s", adj, ani);
    snprintf(color, STOA_COLOR_LEN, "%s", colors[stoa_random_below(STOA_ARRAY_LEN(colors))]);
}

size_t stoa_names_adjective_count(void) { return STOA_ARRAY_LEN(adjectives); }
size_t stoa_names_animal_count(void) { return STOA_ARRAY_LEN(animals); }
const char *stoa_names_adjective(size_t i) { return i < STOA_ARRAY_LEN(adjectives) ? adjectives[i] : NULL; }
const char *stoa_names_animal(size_t i) { return i < STOA_ARRAY_LEN(animals) ? animals[i] : NULL; }
size_t stoa_names_color_count(void) { return STOA_ARRAY_LEN(colors); }
const char *stoa_names_color(size_t i) { return i < STOA_ARRAY_LEN(colors) ? colors[i] : NULL; }
