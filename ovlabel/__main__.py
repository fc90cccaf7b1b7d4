from ovlabel.cli import main

main()
