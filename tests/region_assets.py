"""The two-person region image the server tests install: person 0 red, person 1 green, a black strip between."""

REGIONS_IMAGE = "bolid_two_people_regions.png"
IMAGE_SIZE = 128
REGION_COLUMNS = ((0, 48), (80, 128))  # image columns [x0, x1) of person 0 and person 1
