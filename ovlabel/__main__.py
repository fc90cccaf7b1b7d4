from ovlabel.entry import main

main()
