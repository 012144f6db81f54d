"""Task ``rust``: the Radiographic Union Score for Tibial fractures from an AP and a lateral radiograph."""
